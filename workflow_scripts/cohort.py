from cmbflow.cohort import write_cohort_tables
from cmbflow.step import run_step

run_step(
    snakemake,
    write_cohort_tables,
    summaries=list(snakemake.input.summaries),
    detections=list(snakemake.input.detections),
    out_summary=snakemake.output.summary,
    out_detections=snakemake.output.detections,
    ratings_dir=snakemake.params.ratings_dir,
    out_agreement=snakemake.output.get("agreement"),
)
