from pathlib import Path

from cmbflow.step import run_step
from cmbflow.training import collect_patches

run_step(
    snakemake,
    collect_patches,
    derivatives_dir=snakemake.params.stage1_dir,
    truth_dir=Path(snakemake.input.bids) / "derivatives" / "simulation",
    out_npz=snakemake.output[0],
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    context_mm=snakemake.params.context_mm,
)
