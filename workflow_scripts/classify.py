from cmbflow.config import ClassifierConfig
from cmbflow.stages import classify_candidates
from cmbflow.step import run_step

run_step(
    snakemake,
    classify_candidates,
    stage1=snakemake.input.stage1,
    image=snakemake.input.image,
    mask=snakemake.input.mask,
    hpphase=snakemake.input.get("hpphase"),
    xfm=snakemake.input.xfm,
    atlas=snakemake.input.atlas,
    out_candidates=snakemake.output.candidates,
    out_candidates_json=snakemake.output.candidates_json,
    out_calls=snakemake.output.calls,
    out_calls_json=snakemake.output.calls_json,
    params=ClassifierConfig(**snakemake.params.classifier),
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    device=snakemake.params.device,
    label=snakemake.params.label,
)
