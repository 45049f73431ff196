# Detection, in one job: stage 1 finds candidates with the fast radial symmetry transform fused
# with threshold + shape rules; stage 2, a 3D residual CNN, scores every candidate (phase model
# when there is phase, magnitude-only model otherwise), and calls are the candidates above the
# model's threshold. The final tables give each candidate's MNI position (the subject's
# registration) and MARS region. One job: nothing else reads the stage-1 table, and one process
# reads the images and imports torch once. Runs on a GPU when there is one (config: device).
# One thread: given 2, the two stages kept 1.0 and 1.3 cores busy (benchmarks/RESULTS.md), and a
# job holding both cores stops another subject's job running beside it. With GPUs on a cluster, the
# site profile gives it 2 (profiles/slurm), so that a bundle's detect jobs take turns on one GPU.


rule detect:
    input:
        unpack(candidate_inputs),
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
        candidates=CFG.candidates.model_dump(),
        classifier=CFG.classifier.model_dump(mode="json"),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
    log:
        log_path("detect"),
    benchmark:
        benchmark_path("detect"),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/detect.py"
