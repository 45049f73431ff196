# Final microbleed calls from the scored candidates.


rule detect:
    input:
        candidates=rules.candidates.output.tsv,
    output:
        tsv=out(desc="cmb", suffix="detections.tsv"),
        json=out(desc="cmb", suffix="detections.json"),
    params:
        label=label,
        classifier=CFG.classical.model_dump(),
    log:
        log_path("detect"),
    benchmark:
        benchmark_path("detect"),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/detect.py"
