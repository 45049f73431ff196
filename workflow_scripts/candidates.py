from cmbflow.config import CandidateParams
from cmbflow.stages import detect_candidates
from cmbflow.step import run_step

run_step(
    snakemake,
    detect_candidates,
    image=snakemake.input.image,
    mask=snakemake.input.mask,
    hpphase=snakemake.input.get("hpphase"),
    out_tsv=snakemake.output.tsv,
    out_json=snakemake.output.json,
    params=CandidateParams(**snakemake.params.candidates),
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    device=snakemake.params.device,
    label=snakemake.params.label,
)
