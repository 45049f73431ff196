# Visual QC: one self-contained HTML page per subject (fMRIPrep-style, at the top of output_dir)
# and one for the cohort. The figures are also PNG files, marked for `snakemake --report`.


def phase_report_inputs(wildcards):
    """The SWI and high-pass phase, shown beside the magnitude when the subject has phase."""
    if not has_phase(wildcards):
        return {}
    return {"swi": rules.phase_preproc.output.swi, "hpphase": rules.phase_preproc.output.hpphase}


def report_sources(wildcards):
    """The input files named on the page."""
    subject = subject_of(wildcards)
    return {"magnitude": str(subject.mag), "phase": subject.phase and str(subject.phase),
            "T1w": subject.t1w and str(subject.t1w)}


def figure(desc, subcategory, caption, **entities):
    """A per-subject QC figure, listed in `snakemake --report` under its subject (and session)."""
    return report(
        out(datatype="figures", desc=desc, suffix="T2starw.png", **entities),
        caption=f"../report/{caption}.rst",
        category="Subject QC",
        subcategory=subcategory,
        labels=dict(WILDCARDS),
    )


rule subject_report:
    input:
        unpack(phase_report_inputs),
        mag=rules.bias_correct.output.mag,
        mask=rules.brain_mask.output.mask,
        mask_json=rules.brain_mask.output.json,
        warped=rules.register_to_mni.output.warped,
        candidates=rules.classify.output.candidates,
        candidates_json=rules.classify.output.candidates_json,
        metrics=rules.subject_summary.output[0],
    output:
        html=subject_file("_report.html"),
        mask_png=figure("brainmask", "Brain mask", "brain_mask"),
        registration_png=figure("registration", "Registration", "registration", space="MNI152NLin2009aSym"),
        calls_png=figure("calls", "Microbleed calls", "calls"),
        rejected_png=figure("rejected", "Rejected candidates", "rejected"),
    params:
        label=label,
        sources=report_sources,
    log:
        log_path("subject_report"),
    benchmark:
        benchmark_path("subject_report"),
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/subject_report.py"


rule cohort_report:
    input:
        summary=rules.cohort.output.summary,
        detections=rules.cohort.output.detections,
    output:
        html=f"{OUT}/group/cohort_report.html",
        png=report(
            f"{OUT}/group/cohort_cmb_counts.png",
            caption="../report/cohort.rst",
            category="Cohort",
        ),
    params:
        subject_reports={s.label: rules.subject_report.output.html.format(**s.wildcards) for s in SUBJECTS.values()},
    log:
        f"{OUT}/logs/cohort_report.log",
    benchmark:
        f"{OUT}/benchmarks/cohort_report.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/cohort_report.py"
