# Longitudinal monitoring (docs/longitudinal.md): for each subject with two sessions or more,
# once all its sessions are detected, every later session is registered rigidly to the baseline
# and the calls are tracked across sessions (baseline, persisting, new, not seen); the cohort
# table counts the new ones and grades them (ARIA-H, research use).

SESSIONS = {}
for _s in SUBJECTS.values():
    if _s.session:
        SESSIONS.setdefault(_s.subject, []).append(_s)
SESSIONS = {subject: sessions for subject, sessions in SESSIONS.items() if len(sessions) >= 2}


def sessions_of(pattern):
    """A per-session path, for every session of the subject a job is for."""
    return lambda wildcards: [pattern.format(**s.wildcards) for s in SESSIONS[wildcards.subject]]


rule longitudinal:
    input:
        mags=sessions_of(rules.anatomy.output.mag),
        masks=sessions_of(rules.anatomy.output.mask),
        candidates=sessions_of(rules.classify.output.candidates),
    output:
        tsv=f"{OUT}/sub-{{subject}}/anat/sub-{{subject}}_desc-longitudinal_detections.tsv",
        json=f"{OUT}/sub-{{subject}}/anat/sub-{{subject}}_desc-longitudinal_detections.json",
        summary=temp(f"{WORK}/sub-{{subject}}/anat/sub-{{subject}}_desc-longitudinal_summary.tsv"),
    params:
        sessions=lambda wc: [f"ses-{s.session}" for s in SESSIONS[wc.subject]],
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
        summaries=[rules.longitudinal.output.summary.format(subject=subject) for subject in SESSIONS],
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
