from cmbflow.cohort import summarise_subject
from cmbflow.step import run_step

run_step(
    snakemake,
    summarise_subject,
    mag=snakemake.input.mag,
    mask_json=snakemake.input.mask_json,
    xfm_json=snakemake.input.xfm_json,
    candidates=snakemake.input.candidates,
    detections=snakemake.input.detections,
    source=snakemake.params.source,
    has_phase=snakemake.params.has_phase,
    echo=snakemake.params.echo,
    out_json=snakemake.output[0],
    label=snakemake.params.label,
)
