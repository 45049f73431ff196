from cmbflow.stages import make_brain_mask
from cmbflow.step import run_step

run_step(
    snakemake,
    make_brain_mask,
    mag=snakemake.input.mag,
    t1w=snakemake.input.t1w or None,
    out_mask=snakemake.output.mask,
    out_json=snakemake.output.json,
    label=snakemake.params.label,
)
