from cmbflow.config import CandidateParams, PhaseConfig
from cmbflow.step import run_step
from cmbflow.stages import run_stage1

run_step(
    snakemake,
    run_stage1,
    bids_dir=snakemake.input.bids,
    label=snakemake.params.label,
    out_dir=snakemake.params.stage1_dir,
    echo=snakemake.params.echo,
    phase_params=PhaseConfig(**snakemake.params.phase),
    candidate_params=CandidateParams(**snakemake.params.candidates),
    device=snakemake.params.device,
)
