from cmbflow.derivatives import write_dataset_description
from cmbflow.step import run_step

run_step(
    snakemake,
    write_dataset_description,
    path=snakemake.output.description,
    bidsignore=snakemake.output.bidsignore,
    bids_dir=snakemake.params.bids_dir,
)
