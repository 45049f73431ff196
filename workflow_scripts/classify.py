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
    out_tsv=snakemake.output.tsv,
    out_json=snakemake.output.json,
    params=ClassifierConfig(**snakemake.params.classifier),
    paramagnetic_sign=snakemake.params.paramagnetic_sign,
    device=snakemake.params.device,
    label=snakemake.params.label,
)
