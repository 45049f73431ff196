from cmbflow.config import TrainParams
from cmbflow.frst import resolve_device
from cmbflow.step import run_step
from cmbflow.training import train_models

run_step(
    snakemake,
    train_models,
    patches_npz=snakemake.input[0],
    out_phase=snakemake.output.phase,
    out_magnitude=snakemake.output.magnitude,
    out_history=snakemake.output.history,
    params=TrainParams(**snakemake.params.train),
    members=snakemake.params.members,
    device=resolve_device(snakemake.params.device),
)
