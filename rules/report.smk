# Visual QC: one self-contained HTML page per subject (fMRIPrep-style, at the top of output_dir)
# and one for the cohort. The figures are also PNG files, marked for `snakemake --report`.


rule subject_report:
    input:
        unpack(phase_report_inputs),
        mag=rules.bias_correct.output.mag,
        mask=rules.brain_mask.output.mask,
        mask_json=rules.brain_mask.output.json,
        warped=rules.register_to_mni.output.warped,
        candidates=rules.locate.output.candidates,
        candidates_json=rules.locate.output.candidates_json,
        metrics=rules.subject_summary.output[0],
    output:
        html=subject_file("_report.html"),
        mask_png=qc_figure("brainmask", "Brain mask", "brain_mask"),
        registration_png=qc_figure("registration", "Registration", "registration", space="MNI152NLin2009aSym"),
        calls_png=qc_figure("calls", "Microbleed calls", "calls"),
        rejected_png=qc_figure("rejected", "Rejected candidates", "rejected"),
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
        runtime=5,
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
