from cmbflow.stages import bias_correct
from cmbflow.step import run_step

run_step(
    snakemake,
    bias_correct,
    mag=snakemake.input.mag,
    echo=snakemake.params.echo,
    out_image=snakemake.output.mag,
    out_json=snakemake.output.json,
    label=snakemake.params.label,
    problem=snakemake.params.problem,
)
