"""Longitudinal monitoring of one subject's sessions: new microbleeds since baseline (ARIA-H).

1. :func:`cmbflow.anat.register_sessions` registers each follow-up rigidly to the baseline
   (antspyx, coarse brain-masked magnitudes); :func:`points_to_baseline` / :func:`points_from_baseline` move world
   points between the two; :func:`in_field_of_view` says whether a session covered a point.
2. :func:`load_session` reads a session's candidates (calls are its ``is_cmb`` rows) with their
   position in baseline world space; :func:`track_detections` gives every call a track and a
   status, and every earlier call missing from a later session a ``not_seen`` row with a reason
   (written by :func:`write_longitudinal_detections`).
3. :func:`longitudinal_summary` makes the cohort rows, with the ARIA-H grade
   (:func:`aria_h_grade`, research use); :func:`new_bleed_matches` and :func:`score_new_bleeds`
   score the new bleeds against the simulator's truth. Method and rules: docs/longitudinal.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage

from cmbflow.derivatives import N4_MAGNITUDE
from cmbflow.detections import FLOAT_FORMAT, read_detections
from cmbflow.evaluate import match_detections, match_points
from cmbflow.image import atomic_path, voxel_sizes, write_json, xyz_to_ijk
from cmbflow.transforms import Transforms, points_from_mni, points_to_mni

STATUSES = ("baseline", "persisting", "new", "not_seen")
#: Why an earlier call has no call at a later session (the ``reason`` of a ``not_seen`` row).
REASONS = ("outside_field_of_view", "below_threshold", "not_detected")

#: Two detections in different sessions are one lesion when closer (baseline space) than the
#: largest of: this floor; VOXEL_DIAGONALS times the coarser session's voxel diagonal (each
#: position is uncertain by about half a voxel diagonal, plus registration error); the sum of the
#: two apparent radii (blooming differs with TE, B0 and the lesion's position in the voxel).
MIN_TOLERANCE_MM = 3.0
VOXEL_DIAGONALS = 1.5
#: A later call at the place of an earlier sub-threshold candidate is the same lesion (not new)
#: only when neither apparent radius is more than this many times the other.
COMPARABLE_RADIUS_RATIO = 2.0
#: ... and only when the classifier gave that candidate at least this probability. Stage 1 finds
#: about one faint candidate per millilitre of brain, so a new bleed often lands within tolerance
#: of one by chance (3 of 36 new bleeds on the simulated longitudinal cohort of
#: benchmarks/RESULTS.md, at baseline candidates of probability 0.001-0.02); such a candidate is
#: not the same lesion.
COMPARABLE_MIN_PROBABILITY = 0.1
#: A point counts as covered by a session when inside its image grid and within this distance of
#: its brain mask (a lesion at the brain's edge lies partly outside any mask).
FIELD_OF_VIEW_MARGIN_MM = 3.0

#: ARIA-H grade by the number of new microhaemorrhages since baseline (lowest count of each grade).
ARIA_H_GRADES = (("none", 0), ("mild", 1), ("moderate", 5), ("severe", 10))
ARIA_H_NOTE = ("ARIA-H grade from the count of new microbleeds since baseline (none 0, mild 1-4, moderate 5-9, "
               "severe >= 10); research use only, not a clinical grading")

#: Columns of a subject's longitudinal detections table, in order, and what they mean.
LONGITUDINAL_COLUMNS: dict[str, dict[str, object]] = {
    "track": {"Description": "Lesion id across this subject's sessions (from 1)"},
    "session": {"Description": "Session of the row"},
    "status": {"Description": "What the row says about the lesion at this session", "Levels": {
        "baseline": "a call at the baseline session",
        "persisting": "a call of a lesion called at an earlier session, or present as a candidate of comparable "
                      "size (probability >= 0.1) at baseline",
        "new": "a call of a lesion first seen at this session and absent from the baseline",
        "not_seen": "a lesion called at an earlier session without a call at this one (see reason)"}},
    "reason": {"Description": "Why a not_seen lesion has no call; n/a for calls", "Levels": {
        "outside_field_of_view": "the session did not cover the place",
        "below_threshold": "a candidate is there, with the probability in probability, under the threshold",
        "not_detected": "no candidate is there"}},
    "x": {"Description": "World coordinate (RAS+) in this session's own space (for not_seen: where the lesion "
          "should be, mapped from baseline space)", "Units": "mm"},
    "y": {"Description": "See x", "Units": "mm"},
    "z": {"Description": "See x", "Units": "mm"},
    "x_baseline": {"Description": "World coordinate (RAS+) in the baseline session's space, through the rigid "
                   "registration of this session to the baseline", "Units": "mm"},
    "y_baseline": {"Description": "See x_baseline", "Units": "mm"},
    "z_baseline": {"Description": "See x_baseline", "Units": "mm"},
    "probability": {"Description": "The call's microbleed probability (not_seen: the sub-threshold candidate's, "
                    "else n/a)", "Units": "arbitrary"},
    "radius_mm": {"Description": "Apparent radius of the dark region (blooming included)", "Units": "mm"},
    "region": {"Description": "MARS region of the call (not_seen: of the lesion's last call)"},
    "lobe": {"Description": "Lobe or structure of the call (not_seen: of the lesion's last call)"},
    "new_since_baseline": {"Description": "The lesion is absent from the baseline (neither a call nor a candidate "
                           "of comparable size); counted in n_new"},
    "new_since_previous": {"Description": "The call is absent from the previous session (neither a call nor a "
                           "candidate of comparable size); counted in n_new_since_previous"},
}
#: Columns of the cohort's longitudinal table (one row per subject and session).
SUMMARY_COLUMNS = [
    "participant_id", "baseline_session", "session", "n_cmb", "n_new", "n_new_since_previous", "n_persisting",
    "n_not_seen", "aria_h_grade", "registration_similarity",
]


# --------------------------------------------------------------------------- registration


def points_to_baseline(xyz: npt.ArrayLike, transforms: Transforms) -> npt.NDArray[np.float64]:
    """Follow-up world points (N, 3, RAS+ mm) to baseline world points.

    The baseline is the registration's fixed image, as MNI is in :mod:`cmbflow.transforms`.
    """
    return points_to_mni(xyz, transforms)


def points_from_baseline(xyz: npt.ArrayLike, transforms: Transforms) -> npt.NDArray[np.float64]:
    """Baseline world points (N, 3, RAS+ mm) to follow-up world points."""
    return points_from_mni(xyz, transforms)


def in_field_of_view(
    xyz: npt.ArrayLike, mask: nib.Nifti1Image, margin_mm: float = FIELD_OF_VIEW_MARGIN_MM
) -> npt.NDArray[np.bool_]:
    """Which world points (N, 3, RAS+ mm, the mask's session) the session covered: inside the
    image grid and within ``margin_mm`` of the brain mask."""
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    data = np.asarray(mask.dataobj) > 0
    ijk = np.rint(xyz_to_ijk(mask.affine, xyz)).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(data.shape)), axis=1)
    near = ndimage.distance_transform_edt(~data, sampling=voxel_sizes(mask.affine)) <= margin_mm
    out = np.zeros(len(xyz), dtype=bool)
    out[inside] = near[tuple(ijk[inside].T)]
    return out


# --------------------------------------------------------------------------- sessions and tracks


def _identity(xyz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return xyz


def _everywhere(xyz: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.ones(len(xyz), dtype=bool)


@dataclass(frozen=True, eq=False)
class Session:
    """One session's detections, ready for :func:`track_detections`.

    ``detections``: the candidates table (``x y z probability radius_mm is_cmb``, optionally
    ``superseded region lobe``) plus ``x_baseline y_baseline z_baseline``; its ``is_cmb`` rows are
    the calls. ``from_baseline`` maps baseline world points to this session's, ``in_view`` says
    which of this session's world points it covered (defaults: the baseline, which sees everything).
    """

    label: str
    detections: pd.DataFrame
    voxel_size_mm: tuple[float, float, float]
    from_baseline: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]] = field(default=_identity)
    in_view: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]] = field(default=_everywhere)


def load_session(
    label: str, candidates_tsv: str | Path, mask_nifti: str | Path, transforms: Transforms | None = None
) -> Session:
    """A session from its final candidates table and brain mask; ``transforms``: its
    :func:`cmbflow.anat.register_sessions` result's, None for the baseline."""
    table = read_detections(candidates_tsv)
    mask = nib.load(mask_nifti)
    xyz = table[["x", "y", "z"]].to_numpy(dtype=float)
    in_baseline = xyz if transforms is None else points_to_baseline(xyz, transforms)
    table = table.assign(**{f"{axis}_baseline": in_baseline[:, n] for n, axis in enumerate("xyz")})
    return Session(
        label=label,
        detections=table,
        voxel_size_mm=tuple(float(v) for v in voxel_sizes(mask.affine)),  # type: ignore[arg-type]
        from_baseline=_identity if transforms is None else (lambda p: points_from_baseline(p, transforms)),
        in_view=lambda p: in_field_of_view(p, mask),
    )


class _Points(NamedTuple):
    """Lesion positions in baseline space with what the tolerance needs."""

    xyz: npt.NDArray[np.float64]  # (N, 3)
    radius: npt.NDArray[np.float64]  # (N,)
    diagonal: npt.NDArray[np.float64]  # (N,) voxel diagonal of the session each was seen in


def _tolerance_mm(a: _Points, b: _Points) -> npt.NDArray[np.float64]:
    """(len(a), len(b)) distances within which two detections are one lesion (see MIN_TOLERANCE_MM)."""
    coarser = np.maximum(a.diagonal[:, None], b.diagonal[None, :])
    return np.maximum.reduce([
        np.full(coarser.shape, MIN_TOLERANCE_MM), VOXEL_DIAGONALS * coarser, a.radius[:, None] + b.radius[None, :],
    ])


def _points(table: pd.DataFrame, voxel_size_mm: Sequence[float]) -> _Points:
    diagonal = float(np.linalg.norm(voxel_size_mm))
    return _Points(table[["x_baseline", "y_baseline", "z_baseline"]].to_numpy(dtype=float),
                   table["radius_mm"].to_numpy(dtype=float), np.full(len(table), diagonal))


def _link(points: _Points, calls: _Points, candidates: _Points) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """For each of ``points``: the index of the call it matches (one to one; -1 for none), and,
    for the rest, whether it matches (one to one) a candidate of comparable radius."""
    called = np.full(len(points.xyz), -1, dtype=np.int64)
    match = match_points(points.xyz, calls.xyz, _tolerance_mm(points, calls))
    called[match.pairs[:, 0]] = match.pairs[:, 1]
    rest = np.flatnonzero(called < 0)
    left = _Points(*(v[rest] for v in points))
    ratio = np.maximum(left.radius[:, None], candidates.radius[None, :]) / np.maximum(
        np.minimum(left.radius[:, None], candidates.radius[None, :]), 1e-6)
    tolerance = np.where(ratio <= COMPARABLE_RADIUS_RATIO, _tolerance_mm(left, candidates), -1.0)
    candidate = np.zeros(len(points.xyz), dtype=bool)
    candidate[rest[match_points(left.xyz, candidates.xyz, tolerance).pairs[:, 0]]] = True
    return called, candidate


@dataclass(frozen=True, eq=False)
class Longitudinal:
    """One subject's tracked detections (:func:`track_detections`)."""

    sessions: list[str]  # baseline first, then the follow-ups in label order
    detections: pd.DataFrame  # LONGITUDINAL_COLUMNS, sorted by session (that order) and track

    @property
    def baseline(self) -> str:
        return self.sessions[0]


def _standing(session: Session) -> pd.DataFrame:
    table = session.detections
    if "superseded" in table:  # a superseded candidate stands for the same lesion as a more probable one
        table = table[~table["superseded"].astype(bool)]
    return table.reset_index(drop=True)


def _comparable_candidates(table: pd.DataFrame) -> pd.DataFrame:
    """The sub-threshold candidates that can stand for a lesion called at another session."""
    return table[~table["is_cmb"].astype(bool) & (table["probability"] >= COMPARABLE_MIN_PROBABILITY)]


def track_detections(sessions: Sequence[Session], baseline: str | None = None) -> Longitudinal:
    """Give every call of every session a track and a status (see LONGITUDINAL_COLUMNS).

    ``baseline``: the reference session's label (default: the first by sorted label); the
    others follow in label order. At each follow-up the calls are matched one to one to the
    tracks so far (their latest positions); the rest, to the baseline's sub-threshold candidates
    of comparable radius and some probability (``persisting``: the lesion was there at
    baseline); the rest start new
    tracks (``new``). Tracks left without a call get a ``not_seen`` row.
    """
    by_label = {s.label: s for s in sessions}
    if len(by_label) != len(sessions):
        raise ValueError("sessions need distinct labels")
    order = sorted(by_label)
    baseline = order[0] if baseline is None else baseline
    if baseline not in by_label:
        raise ValueError(f"baseline session {baseline!r} is not among the sessions {order}")
    order = [baseline] + [label for label in order if label != baseline]

    rows: list[dict] = []
    tracks: list[dict] = []  # position, radius, diagonal, region, lobe of the latest call; at_baseline
    base = by_label[baseline]
    base_table = _standing(base)
    below_base = _comparable_candidates(base_table)
    for _, call in base_table[base_table["is_cmb"].astype(bool)].iterrows():
        tracks.append(_track(call, base.voxel_size_mm, at_baseline=True))
        rows.append(_row(call, len(tracks), baseline, "baseline", new_since_baseline=False, new_since_previous=False))
    previous = base
    for label in order[1:]:
        session = by_label[label]
        table = _standing(session)
        is_call = table["is_cmb"].astype(bool).to_numpy()
        calls, below = table[is_call].reset_index(drop=True), table[~is_call].reset_index(drop=True)
        call_points = _points(calls, session.voxel_size_mm)
        track_of, was_candidate = _link(call_points, _track_points(tracks), _points(below_base, base.voxel_size_mm))
        prev_table = _standing(previous)
        prev_call = prev_table["is_cmb"].astype(bool).to_numpy()
        in_previous, in_previous_candidate = _link(
            call_points, _points(prev_table[prev_call], previous.voxel_size_mm),
            _points(_comparable_candidates(prev_table), previous.voxel_size_mm))
        seen = set()
        for n, call in calls.iterrows():
            if track_of[n] >= 0:
                number, status = int(track_of[n]) + 1, "persisting"
                tracks[number - 1] = _track(call, session.voxel_size_mm, tracks[number - 1]["at_baseline"])
            else:
                tracks.append(_track(call, session.voxel_size_mm, at_baseline=bool(was_candidate[n])))
                number, status = len(tracks), "persisting" if was_candidate[n] else "new"
            seen.add(number)
            rows.append(_row(call, number, label, status, new_since_baseline=not tracks[number - 1]["at_baseline"],
                             new_since_previous=not (in_previous[n] >= 0 or in_previous_candidate[n])))
        rows += _not_seen(session, [n for n in range(1, len(tracks) + 1) if n not in seen], tracks, below)
        previous = session
    table = pd.DataFrame(rows, columns=list(LONGITUDINAL_COLUMNS))
    table["_order"] = table["session"].map({label: n for n, label in enumerate(order)})
    table = table.sort_values(["_order", "track"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return Longitudinal(order, table)


def _track(call: pd.Series, voxel_size_mm: Sequence[float], at_baseline: bool) -> dict:
    return {
        "xyz": call[["x_baseline", "y_baseline", "z_baseline"]].to_numpy(dtype=float),
        "radius": float(call["radius_mm"]),
        "diagonal": float(np.linalg.norm(voxel_size_mm)),
        "region": call.get("region", np.nan),
        "lobe": call.get("lobe", np.nan),
        "at_baseline": at_baseline,
    }


def _track_points(tracks: Sequence[dict]) -> _Points:
    return _Points(np.asarray([t["xyz"] for t in tracks], dtype=float).reshape(-1, 3),
                   np.asarray([t["radius"] for t in tracks], dtype=float),
                   np.asarray([t["diagonal"] for t in tracks], dtype=float))


def _row(call: pd.Series, track: int, session: str, status: str, **flags: bool) -> dict:
    return {
        "track": track, "session": session, "status": status, "reason": np.nan,
        **{c: float(call[c]) for c in ("x", "y", "z", "x_baseline", "y_baseline", "z_baseline", "probability",
                                        "radius_mm")},
        "region": call.get("region", np.nan), "lobe": call.get("lobe", np.nan), **flags,
    }


def _not_seen(session: Session, numbers: list[int], tracks: list[dict], below: pd.DataFrame) -> list[dict]:
    """``not_seen`` rows of these tracks at ``session``, with the reason and, below the threshold,
    the probability of the (one-to-one matched) candidate."""
    if not numbers:
        return []
    lost = _track_points([tracks[n - 1] for n in numbers])
    xyz_baseline = lost.xyz
    xyz = np.asarray(session.from_baseline(xyz_baseline), dtype=float).reshape(-1, 3)
    covered = np.asarray(session.in_view(xyz), dtype=bool)
    candidates = _points(below, session.voxel_size_mm)
    tolerance = np.where(covered[:, None], _tolerance_mm(lost, candidates), -1.0)
    candidate_of = dict(map(tuple, match_points(lost.xyz, candidates.xyz, tolerance).pairs.tolist()))
    rows = []
    for k, number in enumerate(numbers):
        track = tracks[number - 1]
        reason, probability = "not_detected", np.nan
        if not covered[k]:
            reason = "outside_field_of_view"
        elif k in candidate_of:
            reason, probability = "below_threshold", float(below["probability"].iloc[candidate_of[k]])
        rows.append({
            "track": number, "session": session.label, "status": "not_seen", "reason": reason,
            "x": xyz[k, 0], "y": xyz[k, 1], "z": xyz[k, 2],
            "x_baseline": xyz_baseline[k, 0], "y_baseline": xyz_baseline[k, 1], "z_baseline": xyz_baseline[k, 2],
            "probability": probability, "radius_mm": track["radius"], "region": track["region"],
            "lobe": track["lobe"], "new_since_baseline": not track["at_baseline"], "new_since_previous": False,
        })
    return rows


def write_longitudinal_detections(result: Longitudinal, tsv: str | Path, sidecar: str | Path, **fields: object) -> None:
    """Write a subject's longitudinal detections table and its JSON sidecar (``fields``: e.g.
    Sources), atomically, with the detection tables' fixed float format."""
    with atomic_path(tsv) as tmp:
        result.detections.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep="n/a")
    write_json({"Description": "Microbleed calls tracked across the subject's sessions (docs/longitudinal.md)",
                "BaselineSession": result.baseline, "Sessions": result.sessions, **fields, **LONGITUDINAL_COLUMNS},
               sidecar)


def read_longitudinal(tsv: str | Path) -> Longitudinal:
    """A table written by :func:`write_longitudinal_detections`, with its sessions from the sidecar."""
    meta = json.loads(Path(tsv).with_suffix(".json").read_text())
    table = pd.read_csv(tsv, sep="\t", na_values="n/a", keep_default_na=False, dtype={"session": str})
    return Longitudinal(meta["Sessions"], table)


# --------------------------------------------------------------------------- summary and grade


def aria_h_grade(n_new: int) -> str:
    """ARIA-H grade (research use) from the number of new microhaemorrhages since baseline."""
    if n_new < 0:
        raise ValueError(f"a count of new microbleeds cannot be negative ({n_new})")
    return next(grade for grade, lowest in reversed(ARIA_H_GRADES) if n_new >= lowest)


def longitudinal_summary(
    result: Longitudinal, participant_id: str, similarity: Mapping[str, float]
) -> pd.DataFrame:
    """The subject's rows of the cohort table (SUMMARY_COLUMNS), one per session, baseline first.

    ``similarity``: each follow-up's :attr:`cmbflow.anat.SessionRegistration.similarity`. The baseline row
    has its call count only.
    """
    table = result.detections
    rows = []
    for label in result.sessions:
        rows_here = table[table["session"] == label]
        calls = rows_here[rows_here["status"] != "not_seen"]
        row = {"participant_id": participant_id, "baseline_session": result.baseline, "session": label,
               "n_cmb": len(calls)}
        if label != result.baseline:
            n_new = int(calls["new_since_baseline"].astype(bool).sum())
            row |= {
                "n_new": n_new,
                "n_new_since_previous": int(calls["new_since_previous"].astype(bool).sum()),
                "n_persisting": int((calls["status"] == "persisting").sum()),
                "n_not_seen": int((rows_here["status"] == "not_seen").sum()),
                "aria_h_grade": aria_h_grade(n_new),
                "registration_similarity": float(similarity[label]),
            }
        rows.append(row)
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    counts = ["n_new", "n_new_since_previous", "n_persisting", "n_not_seen"]
    return out.astype({c: "Int64" for c in counts})


# --------------------------------------------------------------------------- evaluation


def new_bleed_matches(
    result: Longitudinal,
    truth: Mapping[str, pd.DataFrame],
    voxel_size_mm: Mapping[str, Sequence[float]],
) -> list[dict]:
    """One subject's follow-ups scored against the simulator's truth, one row each.

    ``truth``: each session's truth lesions table (``desc-truth_lesions.tsv`` of a cohort with
    follow-ups: ``x y z kind diameter_mm session_introduced``). A true new bleed at a follow-up is
    a microbleed introduced after the baseline; a called one is a call with
    ``new_since_baseline``. They are matched in the follow-up's own space with
    :func:`cmbflow.evaluate.match_detections`.
    """
    out = []
    for label in result.sessions[1:]:
        lesions = truth[label]
        true_new = lesions[(lesions["kind"] == "cmb") & (lesions["session_introduced"] != result.baseline)]
        rows = result.detections[result.detections["session"] == label]
        called = rows[(rows["status"] != "not_seen") & rows["new_since_baseline"].astype(bool)]
        match = match_detections(called[["x", "y", "z"]].to_numpy(float), true_new[["x", "y", "z"]].to_numpy(float),
                                 true_new["diameter_mm"].to_numpy(float) / 2, voxel_size_mm[label])
        out.append({
            "session": label, "n_true_new": len(true_new), "n_called_new": len(called),
            "true_positives": match.true_positives, "false_new": match.false_positives,
            "true_grade": aria_h_grade(len(true_new)), "grade": aria_h_grade(len(called)),
        })
    return out


def score_new_bleeds(per_followup: Sequence[dict]) -> dict:
    """Over :func:`new_bleed_matches` rows (of any number of subjects): ``sensitivity`` for new
    bleeds (pooled; NaN without any), ``false_new_per_followup`` and ``grade_agreement`` (the
    fraction of follow-ups whose ARIA-H grade equals the true one)."""
    n_true = sum(r["n_true_new"] for r in per_followup)
    n = len(per_followup)
    return {
        "followups": n,
        "true_new": n_true,
        "sensitivity": sum(r["true_positives"] for r in per_followup) / n_true if n_true else float("nan"),
        "false_new_per_followup": sum(r["false_new"] for r in per_followup) / n if n else float("nan"),
        "grade_agreement": sum(r["grade"] == r["true_grade"] for r in per_followup) / n if n else float("nan"),
    }


def evaluate_longitudinal(truth_dir: str | Path, output_dir: str | Path) -> dict | None:
    """New-bleed detection of a workflow run on a simulated cohort with follow-ups
    (``cmbflow simulate --sessions N``): :func:`score_new_bleeds` over every subject with a
    longitudinal table and truth, plus ``per_followup`` rows; None when the run has none."""
    truth_dir, output_dir = Path(truth_dir), Path(output_dir)
    rows = []
    for tsv in sorted(output_dir.glob("sub-*/anat/sub-*_desc-longitudinal_detections.tsv")):
        subject = tsv.name.split("_")[0]
        result = read_longitudinal(tsv)
        truth, voxels = {}, {}
        for session in result.sessions[1:]:
            prefix = f"{subject}/{session}/anat/{subject}_{session}"
            truth_tsv = truth_dir / f"{prefix}_desc-truth_lesions.tsv"
            if not truth_tsv.exists():
                break
            truth[session] = pd.read_csv(truth_tsv, sep="\t")
            voxels[session] = voxel_sizes(nib.load(output_dir / f"{prefix}{N4_MAGNITUDE}.nii.gz").affine)
        else:
            rows += [{"subject": subject, **row} for row in new_bleed_matches(result, truth, voxels)]
    return {**score_new_bleeds(rows), "per_followup": rows} if rows else None
