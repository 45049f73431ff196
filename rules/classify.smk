# Stage 2: a 3D residual CNN scores every candidate (phase model when there is phase,
# magnitude-only model otherwise); calls are the candidates above the model's threshold. The
# final tables give each candidate's MNI position (the subject's registration) and MARS region.


rule classify:
    input:
        unpack(candidate_inputs),
        stage1=rules.candidates.output.tsv,
        mask=rules.anatomy.output.mask,
        xfm=rules.anatomy.output.xfm,
        atlas=rules.mars_atlas.output.image,
    output:
        candidates=out(desc="candidates", suffix="detections.tsv"),
        candidates_json=out(desc="candidates", suffix="detections.json"),
        calls=out(desc="cmb", suffix="detections.tsv"),
        calls_json=out(desc="cmb", suffix="detections.json"),
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
