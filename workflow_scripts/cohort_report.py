from cmbflow.report.pages import write_cohort_report
from cmbflow.step import run_step

run_step(
    snakemake,
    write_cohort_report,
    summary=snakemake.input.summary,
    detections=snakemake.input.detections,
    out_html=snakemake.output.html,
    out_png=snakemake.output.png,
    subject_reports=snakemake.params.subject_reports,
)
