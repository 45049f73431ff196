# Where each candidate lies: MNI position through the subject's registration, and its
# Microbleed Anatomical Rating Scale region from one label volume built once per run.
from cmbflow.mars import ATLAS_NAME, ATLAS_TABLE


rule mars_atlas:
    output:
        image=f"{OUT}/atlas/{ATLAS_NAME}",
        tsv=f"{OUT}/atlas/{ATLAS_TABLE}",
    log:
        f"{OUT}/logs/mars_atlas.log",
    benchmark:
        f"{OUT}/benchmarks/mars_atlas.tsv",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/mars_atlas.py"


rule locate:
    input:
        tsv=rules.classify.output.tsv,
        json=rules.classify.output.json,
        xfm=rules.register_to_mni.output.xfm,
        atlas=rules.mars_atlas.output.image,
    output:
        candidates=out(desc="candidates", suffix="detections.tsv"),
        candidates_json=out(desc="candidates", suffix="detections.json"),
        calls=out(desc="cmb", suffix="detections.tsv"),
        calls_json=out(desc="cmb", suffix="detections.json"),
    log:
        log_path("locate"),
    benchmark:
        benchmark_path("locate"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/locate.py"


# The calls as raters see them: a label map and a 3D Slicer point list (docs/ratings.md).
rule viewer_files:
    input:
        calls=rules.locate.output.calls,
        grid=rules.bias_correct.output.mag,
    output:
        dseg=out(desc="cmb", suffix="dseg.nii.gz"),
        dseg_tsv=out(desc="cmb", suffix="dseg.tsv"),
        dseg_json=out(desc="cmb", suffix="dseg.json"),
        markups=out(desc="cmb", suffix="markups.mrk.json"),
    log:
        log_path("viewer_files"),
    benchmark:
        benchmark_path("viewer_files"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/viewer_files.py"
