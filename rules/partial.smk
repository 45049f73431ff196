# After a run in which subjects failed (--keep-going finishes the others), the cohort tables of
# the subjects that finished, with a status for every subject: "ok", or why it has no results
# (the failed job's one-line error). group/cohort_summary.csv itself is written only when every
# subject finished; once it is, the partial tables are out of date and removed.
from cmbflow.cohort import write_partial_cohort_tables

PARTIAL_TABLES = [f"{OUT}/group/cohort_summary_partial.csv", f"{OUT}/group/cohort_detections_partial.csv"]


def write_partial_tables():
    if not SUBJECTS:  # e.g. snakemake train
        return
    summaries = expand_subjects(rules.subject_report.output.metrics)
    outputs = dict(zip(SUBJECTS, zip(summaries, expand_subjects(rules.classify.output.calls))))
    missing = write_partial_cohort_tables(outputs, f"{OUT}/logs", *PARTIAL_TABLES)
    print(
        f"cmbflow: {missing} of {len(outputs)} subjects have no results; cohort tables of the others, with "
        f"every subject's status: {PARTIAL_TABLES[0]}",
        file=sys.stderr,
    )


def remove_outdated_partial_tables():
    complete = rules.cohort.output.summary
    for path in PARTIAL_TABLES:
        if os.path.exists(path) and os.path.exists(complete) and os.path.getmtime(complete) > os.path.getmtime(path):
            os.remove(path)


onerror:
    write_partial_tables()


onsuccess:
    remove_outdated_partial_tables()
