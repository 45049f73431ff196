from cmbflow.classical import ClassicalParams
from cmbflow.stages import call_microbleeds
from cmbflow.step import run_step

run_step(
    snakemake,
    call_microbleeds,
    candidates=snakemake.input.candidates,
    out_tsv=snakemake.output.tsv,
    out_json=snakemake.output.json,
    params=ClassicalParams(**snakemake.params.classifier),
    label=snakemake.params.label,
)
