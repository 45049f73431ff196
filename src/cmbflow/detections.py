"""The per-subject detection tables (BIDS-Derivatives TSV + JSON sidecar)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cmbflow.image import atomic_path, write_json

#: Columns every detections table starts with, in this order, and what they mean.
CORE_COLUMNS: dict[str, dict[str, str]] = {
    "x": {"Description": "World coordinate (RAS+) of the detection, from the input magnitude's affine", "Units": "mm"},
    "y": {"Description": "World coordinate (RAS+), see x", "Units": "mm"},
    "z": {"Description": "World coordinate (RAS+), see x", "Units": "mm"},
    "i": {"Description": "Index along the first array axis (0-based) of the input magnitude's voxel that contains x y z"},
    "j": {"Description": "Voxel index along the second array axis (0-based)"},
    "k": {"Description": "Voxel index along the third array axis (0-based)"},
    "probability": {"Description": "Probability that the detection is a cerebral microbleed", "Units": "arbitrary"},
    "radius_mm": {"Description": "Apparent radius of the dark region (blooming included)", "Units": "mm"},
    "volume_mm3": {"Description": "Apparent volume of the dark region", "Units": "mm^3"},
}

#: Descriptions of the feature columns stage 1 adds after the core columns.
FEATURE_COLUMNS: dict[str, dict[str, str]] = {
    "frst": {"Description": "Fast radial symmetry transform response at the detection (dark-blob evidence)"},
    "contrast": {"Description": "1 - darkest intensity / local background intensity"},
    "roundness": {"Description": "Smallest / largest principal axis of the dark region (1 = sphere)"},
    "elongation": {"Description": "Largest / middle principal axis of the dark region (vessel-likeness)"},
    "phase_dipole": {"Description": "High-pass phase contrast between the lobes along B0 and the equatorial "
                     "plane, signed so that paramagnetic sources are positive; empty without phase", "Units": "rad"},
    "edge_distance_mm": {"Description": "Distance to the brain mask boundary", "Units": "mm"},
    "source": {"Description": "Which candidate generator found it", "Levels": {
        "frst": "radial symmetry transform only", "threshold": "threshold + shape only", "both": "both"}},
    "is_cmb": {"Description": "Whether the detection is a final microbleed call"},
}

#: Fixed float formatting: identical inputs give byte-identical tables.
FLOAT_FORMAT = "%.4f"


def write_detections(table: pd.DataFrame, tsv: str | Path, sidecar: str | Path, description: str, **extra: object) -> None:
    """Write a detections table (core columns first) and its JSON sidecar, atomically."""
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"detections table lacks columns {missing}")
    ordered = table[list(CORE_COLUMNS) + [c for c in table.columns if c not in CORE_COLUMNS]]
    with atomic_path(tsv) as tmp:
        ordered.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep="n/a")
    columns = {c: (CORE_COLUMNS | FEATURE_COLUMNS).get(c, {"Description": c}) for c in ordered.columns}
    write_json({"Description": description, **extra, **columns}, sidecar)


def read_detections(tsv: str | Path) -> pd.DataFrame:
    """Read a detections table written by :func:`write_detections`."""
    return pd.read_csv(tsv, sep="\t", na_values="n/a", keep_default_na=False)

