from cmbflow.derivatives import write_dataset_description
from cmbflow.step import run_step

run_step(snakemake, write_dataset_description, path=snakemake.output[0], bids_dir=snakemake.params.bids_dir)
