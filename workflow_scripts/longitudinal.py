from cmbflow.stages import track_sessions
from cmbflow.step import run_step

run_step(
    snakemake,
    track_sessions,
    sessions=snakemake.params.sessions,
    mags=list(snakemake.input.mags),
    masks=list(snakemake.input.masks),
    candidates=list(snakemake.input.candidates),
    out_tsv=snakemake.output.tsv,
    out_json=snakemake.output.json,
    out_html=snakemake.output.html,
    baseline=snakemake.params.baseline,
    label=snakemake.params.label,
)
