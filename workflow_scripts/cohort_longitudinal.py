from cmbflow.cohort import write_longitudinal_table
from cmbflow.step import run_step

run_step(
    snakemake,
    write_longitudinal_table,
    detections=list(snakemake.input.detections),
    out_csv=snakemake.output.csv,
    out_json=snakemake.output.json,
)
