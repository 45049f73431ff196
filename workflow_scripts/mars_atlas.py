from cmbflow.mars import write_mars_atlas
from cmbflow.step import run_step

run_step(snakemake, write_mars_atlas, out_image=snakemake.output.image, out_tsv=snakemake.output.tsv)
