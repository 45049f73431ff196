from cmbflow.step import run_step
from cmbflow.viewer import write_viewer_files

run_step(
    snakemake,
    write_viewer_files,
    calls=snakemake.input.calls,
    grid=snakemake.input.grid,
    out_dseg=snakemake.output.dseg,
    out_dseg_tsv=snakemake.output.dseg_tsv,
    out_dseg_json=snakemake.output.dseg_json,
    out_markups=snakemake.output.markups,
)
