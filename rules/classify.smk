# Stage 2: a 3D residual CNN scores every candidate (phase model when there is phase,
# magnitude-only model otherwise); calls are the candidates above the model's threshold.


rule classify:
    input:
        unpack(candidate_inputs),
        stage1=rules.candidates.output.tsv,
        mask=rules.brain_mask.output.mask,
    output:
        tsv=temp(work(desc="classified", suffix="detections.tsv")),
        json=temp(work(desc="classified", suffix="detections.json")),
    params:
        label=label,
        device=CFG.device,
        classifier=CFG.classifier.model_dump(mode="json"),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
    log:
        log_path("classify"),
    benchmark:
        benchmark_path("classify"),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/classify.py"
