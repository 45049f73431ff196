# Longitudinal monitoring (docs/longitudinal.md): for each subject with two sessions or more,
# once all its sessions are detected, every later session is registered rigidly to the baseline
# and the calls are tracked across sessions (baseline, persisting, new, not seen); the cohort
# table counts the new ones and grades them (ARIA-H, research use).


rule longitudinal:
    input:
        mags=sessions_of(rules.anatomy.output.mag),
        masks=sessions_of(rules.anatomy.output.mask),
        candidates=sessions_of(rules.detect.output.candidates),
    output:
        tsv=f"{OUT}/sub-{{subject}}/anat/sub-{{subject}}_desc-longitudinal_detections.tsv",
        json=f"{OUT}/sub-{{subject}}/anat/sub-{{subject}}_desc-longitudinal_detections.json",
        html=f"{OUT}/sub-{{subject}}_desc-longitudinal_report.html",
    params:
        sessions=lambda wc: [f"ses-{s.session}" for s in followed_subjects()[wc.subject]],
        baseline=CFG.longitudinal.baseline_session and f"ses-{CFG.longitudinal.baseline_session}",
        label=lambda wc: f"sub-{wc.subject}",
    log:
        f"{OUT}/logs/longitudinal/sub-{{subject}}.log",
    benchmark:
        f"{OUT}/benchmarks/longitudinal/sub-{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/longitudinal.py"


rule cohort_longitudinal:
    input:
        detections=lambda wc: [rules.longitudinal.output.tsv.format(subject=s) for s in followed_subjects()],
    output:
        csv=f"{OUT}/group/cohort_longitudinal.csv",
        json=f"{OUT}/group/cohort_longitudinal.json",
    log:
        f"{OUT}/logs/cohort_longitudinal.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/cohort_longitudinal.py"
