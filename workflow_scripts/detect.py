from cmbflow.config import CandidateParams, ClassifierConfig
from cmbflow.stages import detect_microbleeds
from cmbflow.step import run_step

run_step(
    snakemake,
    detect_microbleeds,
    image=snakemake.input.image,
    mask=snakemake.input.mask,
    hpphase=snakemake.input.get("hpphase"),
    xfm=snakemake.input.xfm,
    atlas=snakemake.input.atlas,
    out_candidates=snakemake.output.candidates,
    out_candidates_json=snakemake.output.candidates_json,
    out_calls=snakemake.output.calls,
    out_calls_json=snakemake.output.calls_json,
    candidate_params=CandidateParams(**snakemake.params.candidates),
    classifier_params=ClassifierConfig(**snakemake.params.classifier),
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    device=snakemake.params.device,
    label=snakemake.params.label,
)
