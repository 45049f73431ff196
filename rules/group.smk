# Cohort tables (from each subject's QC row and calls), the cohort page, and the derivatives'
# dataset_description.json.
from cmbflow.derivatives import BIDSIGNORE, DATASET_DESCRIPTION


if CFG.analysis_level == "group":  # aggregate the subjects already processed, never start one
    SUBJECTS = {
        key: subject
        for key, subject in SUBJECTS.items()
        if all(os.path.exists(p.format(**subject.wildcards))
               for p in [rules.subject_report.output.metrics, *rules.detect.output])
    }
    if not SUBJECTS:
        raise InputError("group: no subject has finished outputs yet", path=OUT,
                         fix="run the participant level first")


# With ratings, the agreement between raters joins the cohort tables.
COHORT_TABLES = {"summary": f"{OUT}/group/cohort_summary.csv", "detections": f"{OUT}/group/cohort_detections.csv"}
if CFG.ratings_dir is not None:
    COHORT_TABLES["agreement"] = f"{OUT}/group/rater_agreement.csv"


rule cohort:
    input:
        summaries=expand_subjects(rules.subject_report.output.metrics),
        detections=expand_subjects(rules.detect.output.calls),
        ratings=ratings_inputs,
    output:
        **COHORT_TABLES,
    params:
        ratings_dir=CFG.ratings_dir and str(CFG.ratings_dir),
    log:
        f"{OUT}/logs/cohort.log",
    benchmark:
        f"{OUT}/benchmarks/cohort.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/cohort.py"


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


rule dataset_description:
    output:
        description=f"{OUT}/{DATASET_DESCRIPTION}",
        bidsignore=f"{OUT}/{BIDSIGNORE}",
    params:
        bids_dir=str(CFG.bids_dir),
    log:
        f"{OUT}/logs/dataset_description.log",
    benchmark:
        f"{OUT}/benchmarks/dataset_description.tsv"
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/dataset_description.py"
