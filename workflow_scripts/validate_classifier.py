from pathlib import Path

from cmbflow.frst import resolve_device
from cmbflow.model_card import validate_and_write_card
from cmbflow.step import run_step

run_step(
    snakemake,
    validate_and_write_card,
    weights={"phase": snakemake.input.phase, "magnitude": snakemake.input.magnitude},
    history_json=snakemake.input.history,
    stage1_dir=snakemake.params.stage1_dir,
    truth_dir=Path(snakemake.input.bids) / "derivatives" / "simulation",
    training=snakemake.params.training,
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    device=resolve_device(snakemake.params.device),
    out_json=snakemake.output.card,
    out_md=snakemake.output.card_md,
    out_png=snakemake.output.froc,
)
