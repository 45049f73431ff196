# Stage 1: candidates from the fast radial symmetry transform fused with threshold + shape
# rules, with their features. Runs on a GPU when there is one (config: device).


rule candidates:
    input:
        unpack(candidate_inputs),
        mask=rules.anatomy.output.mask,
    output:
        tsv=temp(work(desc="stage1", suffix="detections.tsv")),
        json=temp(work(desc="stage1", suffix="detections.json")),
    params:
        label=label,
        device=CFG.device,
        candidates=CFG.candidates.model_dump(),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
    log:
        log_path("candidates"),
    benchmark:
        benchmark_path("candidates"),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/candidates.py"
