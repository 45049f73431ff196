# Phase: units to radians, unwrapping, high-pass filtering, and the SWI built from them.


rule phase_preproc:
    input:
        mag=rules.anatomy.output.mag,
        phase=lambda wc: subject_of(wc).phase,
        mask=rules.anatomy.output.mask,
    output:
        hpphase=out(part="phase", desc="hpphase", suffix="T2starw.nii.gz"),
        hpphase_json=out(part="phase", desc="hpphase", suffix="T2starw.json"),
        swi=out(desc="swi", suffix="T2starw.nii.gz"),
        swi_json=out(desc="swi", suffix="T2starw.json"),
    params:
        label=label,
        echo=CFG.echo,
        phase=CFG.phase.model_dump(),
    log:
        log_path("phase_preproc"),
    benchmark:
        benchmark_path("phase_preproc"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/phase_preproc.py"
