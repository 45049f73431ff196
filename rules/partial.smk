# After a run in which subjects failed (--keep-going finishes the others), the cohort tables of
# the subjects that finished, with a status for every subject: "ok", or why it has no results
# (the failed job's one-line error). group/cohort_summary.csv itself is written only when every
# subject finished; once it is, the partial tables are out of date and removed. Likewise the
# longitudinal table: the subjects tracked, and a row with a status for each session of the others.
from cmbflow.cohort import write_partial_cohort_tables, write_partial_longitudinal_table

PARTIAL_TABLES = [f"{OUT}/group/cohort_summary_partial.csv", f"{OUT}/group/cohort_detections_partial.csv"]
PARTIAL_LONGITUDINAL = f"{OUT}/group/cohort_longitudinal_partial.csv"
PARTIAL_LONGITUDINAL_JSON = f"{OUT}/group/cohort_longitudinal_partial.json"


def write_partial_tables():
    if not SUBJECTS:  # e.g. snakemake train
        return
    summaries = expand_subjects(rules.subject_report.output.metrics)
    outputs = dict(zip(SUBJECTS, zip(summaries, expand_subjects(rules.detect.output.calls))))
    missing = write_partial_cohort_tables(outputs, f"{OUT}/logs", *PARTIAL_TABLES)
    print(
        f"cmbflow: {missing} of {len(outputs)} subjects have no results; cohort tables of the others, with "
        f"every subject's status: {PARTIAL_TABLES[0]}",
        file=sys.stderr,
    )
    followed = {
        f"sub-{subject}": (
            rules.longitudinal.output.tsv.format(subject=subject),
            {f"ses-{s.session}": rules.subject_report.output.metrics.format(**s.wildcards) for s in sessions},
        )
        for subject, sessions in followed_subjects().items()
    }
    if followed:
        untracked = write_partial_longitudinal_table(
            followed, CFG.longitudinal.baseline_session and f"ses-{CFG.longitudinal.baseline_session}",
            f"{OUT}/logs", PARTIAL_LONGITUDINAL)
        print(f"cmbflow: {untracked} later sessions of {len(followed)} followed subjects are not tracked; the "
              f"longitudinal table of the others, with every session's status: {PARTIAL_LONGITUDINAL}", file=sys.stderr)


def remove_outdated_partial_tables():
    for complete, partial in [(rules.cohort.output.summary, PARTIAL_TABLES),
                              (rules.cohort_longitudinal.output.csv, [PARTIAL_LONGITUDINAL, PARTIAL_LONGITUDINAL_JSON])]:
        for path in partial:
            if os.path.exists(path) and os.path.exists(complete) and os.path.getmtime(complete) > os.path.getmtime(path):
                os.remove(path)


onerror:
    write_partial_tables()


onsuccess:
    remove_outdated_partial_tables()
