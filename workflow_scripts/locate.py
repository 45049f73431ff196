from cmbflow.detections import locate_detections
from cmbflow.step import run_step

run_step(
    snakemake,
    locate_detections,
    classified=snakemake.input.tsv,
    classified_json=snakemake.input.json,
    xfm=snakemake.input.xfm,
    atlas=snakemake.input.atlas,
    out_candidates=snakemake.output.candidates,
    out_candidates_json=snakemake.output.candidates_json,
    out_calls=snakemake.output.calls,
    out_calls_json=snakemake.output.calls_json,
)
