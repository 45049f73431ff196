from cmbflow.stages import prepare_anatomy
from cmbflow.step import run_step

run_step(
    snakemake,
    prepare_anatomy,
    mag=snakemake.input.mag,
    t1w=snakemake.input.t1w or None,
    echo=snakemake.params.echo,
    out_n4=snakemake.output.mag,
    out_n4_json=snakemake.output.mag_json,
    out_mask=snakemake.output.mask,
    out_mask_json=snakemake.output.mask_json,
    out_xfm=snakemake.output.xfm,
    out_xfm_json=snakemake.output.xfm_json,
    out_warped=snakemake.output.warped,
    out_warped_json=snakemake.output.warped_json,
    label=snakemake.params.label,
    problem=snakemake.params.problem,
)
