# Per-subject QC summary, cohort tables and the derivatives' dataset_description.json.
from cmbflow.derivatives import BIDSIGNORE, DATASET_DESCRIPTION


rule subject_summary:
    input:
        mag=rules.bias_correct.output.mag,
        mask_json=rules.brain_mask.output.json,
        xfm_json=rules.register_to_mni.output.json,
        candidates=rules.locate.output.candidates,
        detections=rules.locate.output.calls,
    output:
        out(desc="qc", suffix="metrics.json"),
    params:
        label=label,
        source=lambda wc: str(subject_of(wc).mag),
        has_phase=has_phase,
        echo=lambda wc: subject_of(wc).echo,
    log:
        log_path("subject_summary"),
    benchmark:
        benchmark_path("subject_summary"),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/subject_summary.py"


if CFG.analysis_level == "group":  # aggregate the subjects already processed, never start one
    SUBJECTS = {
        key: subject
        for key, subject in SUBJECTS.items()
        if all(os.path.exists(p.format(**subject.wildcards)) for p in rules.subject_summary.output + rules.locate.output)
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
        summaries=expand_subjects(rules.subject_summary.output[0]),
        detections=expand_subjects(rules.locate.output.calls),
        ratings=ratings_inputs,
    output:
        **COHORT_TABLES,
    params:
        ratings_dir=CFG.ratings_dir and str(CFG.ratings_dir),
    log:
        f"{OUT}/logs/cohort.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/cohort.py"


rule dataset_description:
    output:
        description=f"{OUT}/{DATASET_DESCRIPTION}",
        bidsignore=f"{OUT}/{BIDSIGNORE}",
    params:
        bids_dir=str(CFG.bids_dir),
    log:
        f"{OUT}/logs/dataset_description.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/dataset_description.py"
