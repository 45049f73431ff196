# Per subject: its row of the cohort summary (counts by region, acquisition, QC metrics), one
# self-contained HTML page (fMRIPrep-style, at the top of output_dir), and the calls as raters
# open them in a viewer: a label map and a 3D Slicer point list (docs/ratings.md). The figures
# are also PNG files, marked for `snakemake --report`.


rule subject_report:
    input:
        unpack(phase_report_inputs),
        mag=rules.anatomy.output.mag,
        mask=rules.anatomy.output.mask,
        mask_json=rules.anatomy.output.mask_json,
        xfm_json=rules.anatomy.output.xfm_json,
        warped=rules.anatomy.output.warped,
        candidates=rules.detect.output.candidates,
        candidates_json=rules.detect.output.candidates_json,
        calls=rules.detect.output.calls,
    output:
        metrics=out(desc="qc", suffix="metrics.json"),
        html=subject_file("_report.html"),
        mask_png=qc_figure("brainmask", "Brain mask", "brain_mask"),
        registration_png=qc_figure("registration", "Registration", "registration", space="MNI152NLin2009aSym"),
        calls_png=qc_figure("calls", "Microbleed calls", "calls"),
        rejected_png=qc_figure("rejected", "Rejected candidates", "rejected"),
        dseg=out(desc="cmb", suffix="dseg.nii.gz"),
        dseg_tsv=out(desc="cmb", suffix="dseg.tsv"),
        dseg_json=out(desc="cmb", suffix="dseg.json"),
        markups=out(desc="cmb", suffix="markups.mrk.json"),
    params:
        label=label,
        sources=report_sources,
        has_phase=has_phase,
        echo=lambda wc: subject_of(wc).echo,
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
