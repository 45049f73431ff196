from cmbflow.stages import register_to_template
from cmbflow.step import run_step

run_step(
    snakemake,
    register_to_template,
    mag=snakemake.input.mag,
    mask=snakemake.input.mask,
    out_xfm=snakemake.output.xfm,
    out_warped=snakemake.output.warped,
    out_warped_json=snakemake.output.warped_json,
    out_json=snakemake.output.json,
    label=snakemake.params.label,
)
