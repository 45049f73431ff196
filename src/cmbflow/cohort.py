"""Cohort tables: one row per subject/session, and every final call with its subject."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cmbflow.detections import FLOAT_FORMAT, read_detections
from cmbflow.image import atomic_path
from cmbflow.mars import COUNT_COLUMNS

#: Identifying columns first, in the order statisticians expect.
ID_COLUMNS = ["participant_id", "session_id"]

#: Columns of cohort_summary.csv, in order (each subject's qc metrics JSON holds them).
SUMMARY_COLUMNS = ID_COLUMNS + [
    "n_cmb", *COUNT_COLUMNS, "n_candidates", "phase_used", "echo", "echo_time_ms", "field_strength_t",
    "voxel_size_x_mm", "voxel_size_y_mm", "voxel_size_z_mm", "matrix", "brain_volume_ml",
    "registration_similarity", "source", "cmbflow_version",
]


def write_cohort_tables(
    summaries: list[str | Path],
    detections: list[str | Path],
    out_summary: str | Path,
    out_detections: str | Path,
) -> None:
    """Write ``cohort_summary.csv`` and ``cohort_detections.csv`` from per-subject outputs.

    ``summaries`` and ``detections`` are parallel lists (one entry per subject/session).
    """
    rows = [json.loads(Path(p).read_text()) for p in summaries]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    tables = []
    for row, tsv in zip(rows, detections, strict=True):
        calls = read_detections(tsv)
        calls.insert(0, "session_id", row["session_id"])
        calls.insert(0, "participant_id", row["participant_id"])
        tables.append(calls)
    calls = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ID_COLUMNS)
    order = ID_COLUMNS
    summary = summary.sort_values(order, na_position="first").reset_index(drop=True)
    calls = calls.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)
    for table, path in ((summary, out_summary), (calls, out_detections)):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
