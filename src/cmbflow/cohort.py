"""Cohort tables: one row per subject/session, and every final call with its subject.

``summarise_subject`` writes one subject's row (rule subject_summary); ``write_cohort_tables`` is
the cohort rule: every subject finished. After a run with failed subjects,
``write_partial_cohort_tables`` writes the same tables from the subjects that finished, with a row
for every subject and, in ``status``, why the others have no results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import pandas as pd

from cmbflow import __version__
from cmbflow.detections import FLOAT_FORMAT, read_detections
from cmbflow.image import atomic_path, read_sidecar, voxel_sizes, write_json
from cmbflow.longitudinal import ARIA_H_NOTE, longitudinal_summary, read_longitudinal
from cmbflow.longitudinal import SUMMARY_COLUMNS as LONGITUDINAL_SUMMARY_COLUMNS
from cmbflow.mars import COUNT_COLUMNS, region_counts
from cmbflow.ratings import agreement, rate_subject, ratings_files

#: Identifying columns first, in the order statisticians expect.
ID_COLUMNS = ["participant_id", "session_id"]

#: Columns of cohort_summary.csv, in order (each subject's qc metrics JSON holds them).
SUMMARY_COLUMNS = ID_COLUMNS + [
    "n_cmb", *COUNT_COLUMNS, "n_candidates", "phase_used", "echo", "echo_time_ms", "field_strength_t",
    "voxel_size_x_mm", "voxel_size_y_mm", "voxel_size_z_mm", "matrix", "brain_volume_ml",
    "registration_similarity", "registration_alignment", "source", "cmbflow_version",
]

#: Columns a ratings_dir adds before ``status`` (cmbflow.ratings): accepted calls + missed bleeds,
#: rejected calls, and ``rated`` / ``not rated``.
RATING_COLUMNS = ["n_cmb_rated", "n_rejected", "rating_status"]

#: The last column: ``ok``, or ``failed in <rule>: <the job's one-line error>``, or ``not finished: ...``.
STATUS_COLUMN = "status"

#: What cmbflow.step logs when a job fails (the first such line of a log is the reason).
_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR \S+: (.+)$", re.MULTILINE)


def summarise_subject(
    mag: str | Path,
    mask_json: str | Path,
    xfm_json: str | Path,
    candidates: str | Path,
    detections: str | Path,
    source: str | Path,
    has_phase: bool,
    echo: int | None,
    out_json: str | Path,
    label: str,
) -> None:
    """One subject's row of the cohort summary (counts by region, acquisition, QC metrics)."""
    meta = read_sidecar(source, subject=label)
    img = nib.load(mag)
    vox = voxel_sizes(img.affine)
    subject, _, session = label.partition("_")
    te = meta.get("EchoTime")
    calls = read_detections(detections)
    registration = json.loads(Path(xfm_json).read_text())
    row = {
        "participant_id": subject,
        "session_id": session or None,
        "n_cmb": len(calls),
        **region_counts(calls),
        "n_candidates": len(read_detections(candidates)),
        "phase_used": bool(has_phase),
        "echo": echo,
        "echo_time_ms": round(float(te) * 1000, 3) if te is not None else None,
        "field_strength_t": meta.get("MagneticFieldStrength"),
        "voxel_size_x_mm": round(float(vox[0]), 4),
        "voxel_size_y_mm": round(float(vox[1]), 4),
        "voxel_size_z_mm": round(float(vox[2]), 4),
        "matrix": "x".join(str(s) for s in img.shape[:3]),
        "brain_volume_ml": json.loads(Path(mask_json).read_text())["BrainVolume_ml"],
        "registration_similarity": registration["RegistrationSimilarity"],
        "registration_alignment": registration.get("RegistrationAlignment"),  # outputs before 2026-12-08 lack it
        "source": str(source),
        "cmbflow_version": __version__,
    }
    write_json(row, out_json)


def write_cohort_tables(
    summaries: list[str | Path],
    detections: list[str | Path],
    out_summary: str | Path,
    out_detections: str | Path,
    failed: Mapping[str, str] | None = None,
    ratings_dir: str | Path | None = None,
    out_agreement: str | Path | None = None,
) -> None:
    """Write ``cohort_summary.csv`` and ``cohort_detections.csv`` from per-subject outputs.

    ``summaries`` and ``detections`` are parallel lists (one entry per finished subject/session);
    ``failed`` maps the labels (``sub-X`` or ``sub-X_ses-Y``) of subjects without results to
    their status, which their otherwise empty summary row carries. With ``ratings_dir``, the
    raters' consensus joins both tables (:data:`RATING_COLUMNS`, a ``rating`` per call and a row
    per missed bleed) and ``out_agreement`` gets the agreement between raters.
    """
    rows = [json.loads(Path(p).read_text()) for p in summaries]
    tables, verdicts = [], []
    for row, tsv in zip(rows, detections, strict=True):
        calls = read_detections(tsv)
        if ratings_dir is not None:
            label = row["participant_id"] + (f"_{row['session_id']}" if row["session_id"] else "")
            files = ratings_files(ratings_dir, label)
            rated = rate_subject(calls, files, label)
            calls["rating"] = rated.ratings
            # i j k stay integers (empty in missed rows), x y z floats (also after a subject without calls)
            kinds = {c: "Int64" for c, kind in calls.dtypes.items() if pd.api.types.is_integer_dtype(kind)}
            missed = rated.missed[["x", "y", "z"]].assign(rating="missed")
            calls = pd.concat([calls, missed], ignore_index=True).astype(kinds | dict.fromkeys("xyz", float))
            row["rating_status"] = "rated" if files else "not rated"
            if files:
                row |= {"n_cmb_rated": rated.ratings.count("accept") + len(rated.missed),
                        "n_rejected": rated.ratings.count("reject")}
            verdicts.append(rated.verdicts)
        calls.insert(0, "session_id", row["session_id"])
        calls.insert(0, "participant_id", row["participant_id"])
        tables.append(calls)
    rows = [row | {STATUS_COLUMN: "ok"} for row in rows]
    for label, status in (failed or {}).items():
        subject, _, session = label.partition("_")
        rows.append({"participant_id": subject, "session_id": session or None, STATUS_COLUMN: status})
    rating_columns = RATING_COLUMNS if ratings_dir is not None else []
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS + rating_columns + [STATUS_COLUMN])
    if rating_columns:  # counts stay integers where failed subjects leave them empty
        summary = summary.astype({"n_cmb_rated": "Int64", "n_rejected": "Int64"})
    empty = ID_COLUMNS + (["rating"] if rating_columns else [])
    calls = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=empty)
    order = ID_COLUMNS
    summary = summary.sort_values(order, na_position="first").reset_index(drop=True)
    calls = calls.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)
    outputs = [(summary, out_summary), (calls, out_detections)]
    if out_agreement is not None:
        outputs.append((agreement(verdicts), out_agreement))
    for table, path in outputs:
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)


def subject_status(label: str, summary: str | Path, logs_dir: str | Path) -> str:
    """``ok`` when the subject's summary exists and no job logged an error after it was written.

    Otherwise the first error of its logs (``failed in <rule>: <message>``), or, when no job
    logged one (not run yet, or killed, e.g. for memory), which job it got to.
    """
    summary = Path(summary)
    written = summary.stat().st_mtime if summary.exists() else float("-inf")
    # logs/<rule>/<label>.log, or logs/<rule>/ses-X/<label>.log where sessions are mixed (rules/common.smk)
    logs = sorted(Path(logs_dir).rglob(f"{label}.log"), key=lambda p: p.stat().st_mtime)
    rule = {log: log.relative_to(logs_dir).parts[0] for log in logs}
    for log in logs:
        error = _ERROR_LINE.search(log.read_text(errors="replace"))
        if error and log.stat().st_mtime >= written:
            return f"failed in {rule[log]}: {error.group(1)}"
    if summary.exists():
        return "ok"
    if not logs:
        return "not finished: no job of this subject has run"
    return (f"not finished: {rule[logs[-1]]} logged no error (still to run, or killed, e.g. out of "
            f"memory); see {logs[-1]}")


def write_partial_cohort_tables(
    subjects: Mapping[str, tuple[str | Path, str | Path]],
    logs_dir: str | Path,
    out_summary: str | Path,
    out_detections: str | Path,
) -> int:
    """The cohort tables of a run where some subjects failed; returns how many have no results.

    ``subjects`` maps every subject's label to its (qc metrics JSON, final calls TSV). They carry
    no ratings: a bad ratings file must not hide why subjects failed.
    """
    status = {label: subject_status(label, summary, logs_dir) for label, (summary, _) in subjects.items()}
    done = [label for label, state in status.items() if state == "ok"]
    write_cohort_tables(
        [subjects[label][0] for label in done],
        [subjects[label][1] for label in done],
        out_summary,
        out_detections,
        failed={label: state for label, state in status.items() if state != "ok"},
    )
    return len(status) - len(done)


def write_longitudinal_table(
    detections: list[str | Path],
    out_csv: str | Path,
    out_json: str | Path,
    not_tracked: Mapping[str, list[dict]] | None = None,
) -> None:
    """``group/cohort_longitudinal.csv``: one row per subject and later session, from the subjects'
    longitudinal detection tables and their sidecars (sessions, registration similarity), with a
    JSON sidecar of its columns. ``not_tracked`` maps subjects without a table to their rows (ids,
    ``n_cmb`` where the session finished, and why it was not tracked in ``status``)."""
    rows = []
    for tsv in detections:
        similarity = json.loads(Path(tsv).with_suffix(".json").read_text())["RegistrationSimilarity"]
        participant = Path(tsv).name.split("_")[0]
        rows.append(longitudinal_summary(read_longitudinal(tsv), participant, similarity).iloc[1:])
    columns = LONGITUDINAL_SUMMARY_COLUMNS + [STATUS_COLUMN]
    table = pd.concat(rows, ignore_index=True).assign(status="ok") if rows else pd.DataFrame(columns=columns)
    untracked = [row for subject_rows in (not_tracked or {}).values() for row in subject_rows]
    if untracked:
        table = pd.concat([table, pd.DataFrame(untracked, columns=columns)], ignore_index=True)
    table = table.sort_values(["participant_id", "session"], kind="stable").reset_index(drop=True)
    with atomic_path(out_csv) as tmp:
        table[columns].astype({"n_cmb": "Int64"}).to_csv(tmp, index=False, float_format="%.4f")
    write_json({"Description": "New microbleeds since the baseline session, per subject and later session "
                "(docs/longitudinal.md)", "aria_h_grade": {"Description": ARIA_H_NOTE},
                "registration_similarity": {"Description": "entropy correlation of the session rigidly registered "
                                            "to the baseline, inside the baseline brain mask"},
                STATUS_COLUMN: {"Description": "ok, or why the session has no longitudinal figures (a failed "
                                "session, or the subject's longitudinal step)"}}, out_json)


def write_partial_longitudinal_table(
    subjects: Mapping[str, tuple[str | Path, Mapping[str, str | Path]]],
    baseline_session: str | None,
    logs_dir: str | Path,
    out_csv: str | Path,
) -> int:
    """The longitudinal cohort table of a run where sessions failed; returns how many sessions have no row from a table.

    ``subjects`` maps each followed subject (``sub-X``) to its longitudinal table and
    ``{session: qc metrics JSON}``. A subject keeps the rows of its table where one was made (by
    this run or an earlier one); every later session without such a row gets one with its call
    count where it finished and, in ``status``, its own failure, the baseline's, or the session
    that stopped the subject from being tracked.
    """
    done, not_tracked = [], {}
    for subject, (tsv, summaries) in subjects.items():
        tracked = set()
        if subject_status(subject, tsv, logs_dir) == "ok":
            done.append(tsv)
            tracked = set(read_longitudinal(tsv).sessions)
        sessions = sorted(summaries)
        baseline = baseline_session if baseline_session in summaries else sessions[0]
        status = {s: subject_status(f"{subject}_{s}", summaries[s], logs_dir) for s in sessions}
        failed = [s for s in sessions if status[s] != "ok"]
        rows = []
        for session in (s for s in sessions if s != baseline and s not in tracked):
            if status[session] != "ok":
                why = status[session]
            elif status[baseline] != "ok":
                why = f"not tracked: baseline {baseline} {status[baseline]}"
            elif failed:
                why = f"not tracked: {', '.join(failed)} has no results"
            else:
                why = subject_status(subject, tsv, logs_dir)
            n_cmb = json.loads(Path(summaries[session]).read_text())["n_cmb"] if status[session] == "ok" else None
            rows.append({"participant_id": subject, "baseline_session": baseline, "session": session,
                         "n_cmb": n_cmb, STATUS_COLUMN: why})
        not_tracked[subject] = rows
    out_csv = Path(out_csv)
    write_longitudinal_table(done, out_csv, out_csv.with_suffix(".json"), not_tracked)
    return sum(len(rows) for rows in not_tracked.values())
