# Anatomy: bias correction, brain mask, registration to MNI152 (antspyx, in-process).
# ITK runs single-threaded (threads: 1): with more threads its registration is not reproducible
# from run to run, even with a fixed seed (see cmbflow.anat).


rule bias_correct:
    input:
        mag=lambda wc: subject_of(wc).mag,
    output:
        mag=out(part="mag", desc="n4", suffix="T2starw.nii.gz"),
        json=out(part="mag", desc="n4", suffix="T2starw.json"),
    params:
        label=label,
        echo=CFG.echo,
        problem=lambda wc: subject_of(wc).problem or "",
    log:
        log_path("bias_correct"),
    benchmark:
        benchmark_path("bias_correct"),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/bias_correct.py"


rule brain_mask:
    input:
        mag=rules.bias_correct.output.mag,
        t1w=lambda wc: subject_of(wc).t1w or [],
    output:
        mask=out(desc="brain", suffix="mask.nii.gz"),
        json=out(desc="brain", suffix="mask.json"),
    params:
        label=label,
    log:
        log_path("brain_mask"),
    benchmark:
        benchmark_path("brain_mask"),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/brain_mask.py"


rule register_to_mni:
    input:
        mag=rules.bias_correct.output.mag,
        mask=rules.brain_mask.output.mask,
    output:
        xfm=out(datatype="xfm", **{"from": "T2starw"}, to="MNI152NLin2009aSym", mode="image", suffix="xfm.mat"),
        warped=out(space="MNI152NLin2009aSym", part="mag", desc="n4", suffix="T2starw.nii.gz"),
        warped_json=out(space="MNI152NLin2009aSym", part="mag", desc="n4", suffix="T2starw.json"),
        json=out(datatype="xfm", **{"from": "T2starw"}, to="MNI152NLin2009aSym", mode="image", suffix="xfm.json"),
    params:
        label=label,
    log:
        log_path("register_to_mni"),
    benchmark:
        benchmark_path("register_to_mni"),
    threads: 1
    resources:
        mem_mb=2500,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/register_to_mni.py"
