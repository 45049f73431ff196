# Anatomy: bias correction, brain mask and registration to MNI152 (antspyx, in-process), in one
# job: the template brain mask comes from the registration, so one registration gives both.
# ITK runs single-threaded (threads: 1): with more threads its registration is not reproducible
# from run to run, even with a fixed seed (see cmbflow.anat).


rule anatomy:
    input:
        mag=lambda wc: subject_of(wc).mag,
        t1w=lambda wc: subject_of(wc).t1w or [],
    output:
        mag=out(part="mag", desc="n4", suffix="T2starw.nii.gz"),
        mag_json=out(part="mag", desc="n4", suffix="T2starw.json"),
        mask=out(desc="brain", suffix="mask.nii.gz"),
        mask_json=out(desc="brain", suffix="mask.json"),
        xfm=out(datatype="xfm", **{"from": "T2starw"}, to="MNI152NLin2009aSym", mode="image", suffix="xfm.mat"),
        xfm_json=out(datatype="xfm", **{"from": "T2starw"}, to="MNI152NLin2009aSym", mode="image", suffix="xfm.json"),
        warped=out(space="MNI152NLin2009aSym", part="mag", desc="n4", suffix="T2starw.nii.gz"),
        warped_json=out(space="MNI152NLin2009aSym", part="mag", desc="n4", suffix="T2starw.json"),
    params:
        label=label,
        echo=CFG.echo,
        problem=lambda wc: subject_of(wc).problem or "",
    log:
        log_path("anatomy"),
    benchmark:
        benchmark_path("anatomy"),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/anatomy.py"
