from cmbflow.cohort import write_longitudinal_table
from cmbflow.step import run_step

run_step(
    snakemake,
    write_longitudinal_table,
    summaries=list(snakemake.input.summaries),
    out_csv=snakemake.output.csv,
    out_json=snakemake.output.json,
)
