from cmbflow.config import PhaseConfig
from cmbflow.stages import preprocess_phase
from cmbflow.step import run_step

run_step(
    snakemake,
    preprocess_phase,
    mag=snakemake.input.mag,
    phase_path=snakemake.input.phase,
    mask=snakemake.input.mask,
    echo=snakemake.params.echo,
    out_hpphase=snakemake.output.hpphase,
    out_hpphase_json=snakemake.output.hpphase_json,
    out_swi=snakemake.output.swi,
    out_swi_json=snakemake.output.swi_json,
    params=PhaseConfig(**snakemake.params.phase),
    label=snakemake.params.label,
)
