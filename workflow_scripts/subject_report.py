from cmbflow.report.pages import write_subject_report
from cmbflow.step import run_step

run_step(
    snakemake,
    write_subject_report,
    magnitude=snakemake.input.mag,
    mask=snakemake.input.mask,
    mask_json=snakemake.input.mask_json,
    xfm_json=snakemake.input.xfm_json,
    warped=snakemake.input.warped,
    candidates=snakemake.input.candidates,
    candidates_json=snakemake.input.candidates_json,
    calls=snakemake.input.calls,
    hpphase=snakemake.input.get("hpphase"),
    swi=snakemake.input.get("swi"),
    sources=snakemake.params.sources,
    has_phase=snakemake.params.has_phase,
    echo=snakemake.params.echo,
    out_metrics=snakemake.output.metrics,
    out_html=snakemake.output.html,
    out_mask_png=snakemake.output.mask_png,
    out_registration_png=snakemake.output.registration_png,
    out_calls_png=snakemake.output.calls_png,
    out_rejected_png=snakemake.output.rejected_png,
    label=snakemake.params.label,
)
