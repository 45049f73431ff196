# Stage 1: candidates from the fast radial symmetry transform fused with threshold + shape
# rules. Runs on a GPU when there is one (config: device).


def candidate_inputs(wildcards):
    """SWI and high-pass phase when the subject has phase, else the bias-corrected magnitude."""
    if has_phase(wildcards):
        return {"image": rules.phase_preproc.output.swi, "hpphase": rules.phase_preproc.output.hpphase}
    return {"image": rules.bias_correct.output.mag}


rule candidates:
    input:
        unpack(candidate_inputs),
        mask=rules.brain_mask.output.mask,
    output:
        tsv=out(desc="candidates", suffix="detections.tsv"),
        json=out(desc="candidates", suffix="detections.json"),
    params:
        label=label,
        device=CFG.device,
        candidates=CFG.candidates.model_dump(),
        classifier=CFG.classical.model_dump(),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
    log:
        log_path("candidates"),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=10,
    script:
        "../workflow_scripts/candidates.py"
