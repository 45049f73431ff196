"""The per-subject detection tables (BIDS-Derivatives TSV + JSON sidecar), and where their
candidates lie (MNI position, region), added as the final ones are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.spatial import cKDTree

from cmbflow.derivatives import sidecar
from cmbflow.image import atomic_path, write_json
from cmbflow.mars import read_mars_atlas

#: Columns every detections table starts with, in this order, and what they mean.
CORE_COLUMNS: dict[str, dict[str, str]] = {
    "x": {"Description": "World coordinate (RAS+) of the detection, from the input magnitude's affine", "Units": "mm"},
    "y": {"Description": "World coordinate (RAS+), see x", "Units": "mm"},
    "z": {"Description": "World coordinate (RAS+), see x", "Units": "mm"},
    "i": {"Description": "Index along the first array axis (0-based) of the input magnitude's voxel that contains x y z"},
    "j": {"Description": "Voxel index along the second array axis (0-based)"},
    "k": {"Description": "Voxel index along the third array axis (0-based)"},
    "probability": {"Description": "Probability that the detection is a cerebral microbleed", "Units": "arbitrary"},
    "probability_sd": {"Description": "Uncertainty of probability: standard deviation, across the classifier's "
                       "networks (ensemble members), of each network's own probability; 0 for a one-network model. "
                       "On the probability scale rather than the logits', so that members agreeing a candidate is "
                       "certain (logits 8 and 15) show no spread and disagreement near the threshold does",
                       "Units": "arbitrary"},
    "radius_mm": {"Description": "Apparent radius of the dark region (blooming included)", "Units": "mm"},
    "volume_mm3": {"Description": "Apparent volume of the dark region", "Units": "mm^3"},
}

#: Candidates closer than this are one lesion. A bleed blooming across thick (2.5-3 mm) slices
#: can give one candidate per slice, about one slice apart; with both called, one lesion counted
#: twice. Microbleeds whose centres are under 4 mm apart read as one dark spot.
SAME_LESION_MM = 4.0

#: Descriptions of the feature columns stage 1 adds after the core columns.
FEATURE_COLUMNS: dict[str, dict[str, str]] = {
    "frst": {"Description": "Fast radial symmetry transform response at the detection (dark-blob evidence)"},
    "contrast": {"Description": "1 - darkest intensity / local background intensity"},
    "roundness": {"Description": "Smallest / largest principal axis of the dark region (1 = sphere)"},
    "elongation": {"Description": "Largest / middle principal axis of the dark region (vessel-likeness)"},
    "phase_dipole": {"Description": "High-pass phase contrast between the lobes along B0 and the equatorial "
                     "plane, signed so that paramagnetic sources are positive; empty without phase", "Units": "rad"},
    "edge_distance_mm": {"Description": "Distance to the brain mask boundary", "Units": "mm"},
    "mirror_contrast": {"Description": "Contrast of the strongest other candidate within 4 mm of this one's "
                        "mirror image across the MNI midline, relative to this one's (0: none); a classifier input"},
    "mirror_darkness": {"Description": "Darkest contrast of the image within 4 mm of this one's mirror image "
                        "across the MNI midline (itself left out), relative to this one's; the mirror veto's "
                        "measure"},
    "source": {"Description": "Which candidate generator found it", "Levels": {
        "frst": "radial symmetry transform only", "threshold": "threshold + shape only", "both": "both"}},
    "superseded": {"Description": f"A more probable candidate within {SAME_LESION_MM:g} mm stands for the same "
                   "lesion, so this one is never a call"},
    "mirror_vetoed": {"Description": "Never a call: mirror_darkness is at least the model card's mirror_veto, "
                      "as at a bilateral iron nucleus"},
    "is_cmb": {"Description": "Whether the detection is a final microbleed call: probability at or above "
               "the threshold, neither superseded nor mirror_vetoed"},
}

#: Where a detection lies (rule locate), after the features.
LOCATION_COLUMNS: dict[str, dict[str, object]] = {
    "mni_x": {"Description": "x y z mapped to MNI152NLin2009aSym space through the subject's affine "
              "registration (RAS+)", "Units": "mm"},
    "mni_y": {"Description": "MNI152NLin2009aSym coordinate, see mni_x", "Units": "mm"},
    "mni_z": {"Description": "MNI152NLin2009aSym coordinate, see mni_x", "Units": "mm"},
    "region": {"Description": "Microbleed Anatomical Rating Scale (MARS) region at mni_x mni_y mni_z "
               "(atlas built from Harvard-Oxford and AAL2, see README); n/a outside the atlas",
               "Levels": {"lobar": "cortex and juxtacortical/subcortical white matter",
                          "deep": "basal ganglia, thalamus, internal/external capsule, corpus callosum, "
                                  "deep and periventricular white matter",
                          "infratentorial": "brainstem and cerebellum"}},
    "lobe": {"Description": "Lobe (lobar: frontal, parietal, temporal, occipital, insula) or structure "
             "(deep: basal_ganglia, thalamus, internal_capsule, external_capsule, corpus_callosum, "
             "deep_white_matter; infratentorial: brainstem, cerebellum); n/a outside the atlas"},
    "hemisphere": {"Description": "Side by the sign of mni_x (midline structures included)",
                   "Levels": {"left": "mni_x < 0", "right": "mni_x >= 0"}},
}

#: Candidates that look like a microbleed mimic (candidates table only).
MIMIC_COLUMNS: dict[str, dict[str, str]] = {
    "mimic_diamagnetic": {"Description": "Phase pattern of a diamagnetic source (calcification-like): "
                          "phase_dipole < -0.2 rad; n/a without phase"},
    "mimic_vessel": {"Description": "Elongated like a vessel seen along its course: elongation > 2"},
}
#: Thresholds of the mimic flags, from stage-1 candidates of 10 simulated subjects matched to the
#: simulator's truth (benchmarks/RESULTS.md): phase_dipole < -0.2 flagged 8 of 9 calcifications,
#: 1 % of vein candidates and no microbleed (least microbleed value +0.27); elongation > 2 flagged
#: 77 % of vein candidates and no microbleed or calcification (largest microbleed value 1.64).
DIAMAGNETIC_PHASE_DIPOLE = -0.2
VESSEL_ELONGATION = 2.0

#: Fixed float formatting: identical inputs give byte-identical tables.
FLOAT_FORMAT = "%.4f"

#: Sidecar fields of the classified table that say how the calls were made (kept by locate).
CLASSIFIER_FIELDS = ("Classifier", "ProbabilityThreshold", "Device", "ClassifierWeightsSHA256")


def write_detections(table: pd.DataFrame, tsv: str | Path, sidecar: str | Path, description: str, **extra: object) -> None:
    """Write a detections table (core columns first) and its JSON sidecar, atomically."""
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"detections table lacks columns {missing}")
    ordered = table[list(CORE_COLUMNS) + [c for c in table.columns if c not in CORE_COLUMNS]]
    with atomic_path(tsv) as tmp:
        ordered.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep="n/a")
    known = CORE_COLUMNS | FEATURE_COLUMNS | LOCATION_COLUMNS | MIMIC_COLUMNS
    columns = {c: known.get(c, {"Description": c}) for c in ordered.columns}
    write_json({"Description": description, **extra, **columns}, sidecar)


def mimic_flags(table: pd.DataFrame) -> pd.DataFrame:
    """``mimic_diamagnetic`` (None where the phase dipole is missing) and ``mimic_vessel`` per row."""
    dipole = table["phase_dipole"]
    return pd.DataFrame({
        "mimic_diamagnetic": (dipole < DIAMAGNETIC_PHASE_DIPOLE).astype(object).where(dipole.notna(), None),
        "mimic_vessel": table["elongation"] > VESSEL_ELONGATION,
    }, index=table.index)


def read_detections(tsv: str | Path) -> pd.DataFrame:
    """Read a detections table written by :func:`write_detections`."""
    return pd.read_csv(tsv, sep="\t", na_values="n/a", keep_default_na=False)


def keep_first_within(xyz: npt.ArrayLike, distance_mm: float) -> npt.NDArray[np.bool_]:
    """Which points (n, 3) to keep when, of points within ``distance_mm`` of a kept one, the
    earlier row wins: one greedy pass in row order."""
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    keep = np.zeros(len(xyz), dtype=bool)
    if len(xyz):
        tree = cKDTree(xyz)
        for row in range(len(xyz)):
            keep[row] = not keep[tree.query_ball_point(xyz[row], distance_mm)].any()
    return keep


def superseded(xyz: npt.ArrayLike, probability: npt.ArrayLike,
               distance_mm: float = SAME_LESION_MM) -> npt.NDArray[np.bool_]:
    """True for candidates within ``distance_mm`` of a more probable candidate that stands (greedy
    non-maximum suppression).

    Whether a candidate stands depends only on the more probable ones, so the calls above any
    threshold are the standing candidates above it: FROC curves over standing candidates are exact.
    """
    order = np.argsort(-np.asarray(probability, dtype=float), kind="stable")
    out = np.zeros(len(order), dtype=bool)
    out[order] = ~keep_first_within(np.asarray(xyz, dtype=float).reshape(-1, 3)[order], distance_mm)
    return out


def mirror_vetoed(mirror_darkness: npt.ArrayLike, veto: float | None) -> npt.NDArray[np.bool_]:
    """Candidates a model does not call because the image at their mirror image across the MNI
    midline is at least ``veto`` times as dark (:func:`cmbflow.patches.mirror_darkness`), as at a
    bilateral iron nucleus; none when ``veto`` is None.

    A veto, not only an input: the magnitude-only model called its validation false positives at
    nuclei with the mirror partner as an input too (benchmarks/RESULTS.md).
    """
    darkness = np.asarray(mirror_darkness, dtype=float)
    return np.zeros(darkness.shape, dtype=bool) if veto is None else darkness >= veto


def standing(xyz: npt.ArrayLike, probability: npt.ArrayLike, mirror_darkness: npt.ArrayLike,
             veto: float | None) -> npt.NDArray[np.bool_]:
    """The candidates that can be calls, as the workflow calls them: neither :func:`superseded` nor
    :func:`mirror_vetoed`."""
    return ~superseded(xyz, probability) & ~mirror_vetoed(mirror_darkness, veto)


def locate_detections(
    table: pd.DataFrame,
    atlas: str | Path,
    out_candidates: str | Path,
    out_candidates_json: str | Path,
    out_calls: str | Path,
    out_calls_json: str | Path,
    **fields: object,
) -> None:
    """Write the final tables of classified candidates (``table``, with ``is_cmb``, ``superseded``,
    ``mirror_vetoed`` and the MNI position ``mni_x mni_y mni_z``): every candidate with its MARS region and mimic
    flags, and the calls (the ``is_cmb`` rows). ``fields``: the candidates sidecar's (Sources, the
    classifier's)."""
    mni = table[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
    table = pd.concat([table, read_mars_atlas(atlas).lookup(mni).set_axis(table.index)], axis=1)
    calls = table[table["is_cmb"]].drop(columns=["is_cmb", "superseded", "mirror_vetoed"]).reset_index(drop=True)
    table = pd.concat([table, mimic_flags(table)], axis=1)
    about = {key: fields[key] for key in CLASSIFIER_FIELDS}
    write_detections(
        table, out_candidates, out_candidates_json,
        description="Microbleed candidates with features, the classifier's probability, location and mimic flags",
        **fields,
    )
    write_detections(
        calls, out_calls, out_calls_json,
        description="Cerebral microbleed detections (final calls) with their location",
        **sidecar([], [out_candidates]), **about,
    )
