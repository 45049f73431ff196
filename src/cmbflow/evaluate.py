"""Lesion-level evaluation of detections against a reference: matching, metrics and FROC.

A detection hits a true lesion when it lies within the lesion's radius plus the largest voxel
edge (the localisation error a voxel grid allows). Matching is one-to-one (Hungarian on
distance), so two detections on one lesion give one hit and one false positive.

The reference is a simulator's ground truth (:func:`evaluate_outputs`) or manual labels
(:func:`evaluate_labels`: points, lesion masks or a ratings folder; docs/evaluation.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import linear_sum_assignment

from scipy import ndimage

from cmbflow.derivatives import BRAIN_MASK, HPPHASE, N4_MAGNITUDE
from cmbflow.detections import read_detections
from cmbflow.errors import InputError
from cmbflow.image import atomic_path, ijk_to_xyz, voxel_sizes
from cmbflow.mars import ATLAS_NAME, MarsAtlas, read_mars_atlas
from cmbflow.ratings import match_to_calls, rate_subject, ratings_files, ratings_table_path

#: Operating points of the FROC summary (false positives per scan).
FROC_FP_RATES = (0.5, 1.0, 2.0, 4.0)
#: Radius of a lesion given as a point without one (a points table without radius_mm, a missed
#: bleed in a ratings table): a microbleed is 2-5 mm across on T2*, so a click anywhere in it is
#: within 2 mm of its centre.
POINT_RADIUS_MM = 2.0
#: Lesion masks: VALDO's name (``sub-X_space-T2S_CMB.nii.gz``) and the BIDS-Derivatives one.
MASK_SUFFIXES = ("_CMB.nii.gz", "_CMB.nii", "_desc-cmb_mask.nii.gz", "_desc-cmb_mask.nii")
#: A single points table for the whole cohort (when LABELS is a file rather than a folder).
POINTS_COLUMNS = ("participant_id", "x", "y", "z")
#: Equal-width probability bins of the reliability table and the expected calibration error.
CALIBRATION_BINS = 10
#: Edges (mm) of the true-diameter bins of ``per_diameter`` (simulated truth): a bleed under 2 mm
#: across is the one most easily taken for a vein's cross-section.
DIAMETER_BINS_MM = (2.0, 3.0, 5.0)
#: A call this close (mm) to a simulated iron nucleus's extent is a call at that nucleus.
NUCLEUS_MARGIN_MM = 2.0


@dataclass(frozen=True)
class Match:
    """One scan's one-to-one matching of detections to true lesions."""

    pairs: npt.NDArray[np.int64]  # (K, 2): detection index, truth index
    distances_mm: npt.NDArray[np.float64]  # (K,)
    unmatched_detections: npt.NDArray[np.int64]
    unmatched_truth: npt.NDArray[np.int64]

    @property
    def true_positives(self) -> int:
        return len(self.pairs)

    @property
    def false_positives(self) -> int:
        return len(self.unmatched_detections)

    @property
    def false_negatives(self) -> int:
        return len(self.unmatched_truth)


def _points(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(values, dtype=float).reshape(-1, 3)


def match_detections(
    detections_xyz: npt.ArrayLike,
    truth_xyz: npt.ArrayLike,
    truth_radius_mm: npt.ArrayLike,
    voxel_size_mm: Sequence[float],
) -> Match:
    """Match detections (N, 3) to true lesions (M, 3), world mm, one to one, within each lesion's
    radius plus the largest voxel edge (see :func:`match_points`)."""
    truth = _points(truth_xyz)
    radius = np.broadcast_to(np.asarray(truth_radius_mm, dtype=float), (len(truth),))
    return match_points(detections_xyz, truth, (radius + float(np.max(voxel_size_mm)))[None, :])


def match_points(a_xyz: npt.ArrayLike, b_xyz: npt.ArrayLike, tolerance_mm: npt.ArrayLike) -> Match:
    """Match points ``a`` (N, 3) to points ``b`` (M, 3), world mm, one to one; a pair counts when
    its distance is at most ``tolerance_mm`` (broadcastable to (N, M)). In the returned
    :class:`Match`, ``a`` are the detections and ``b`` the truth.

    Among all one-to-one assignments in which every pair is within tolerance, the Hungarian
    algorithm picks one with the most pairs and, among those, the least total distance.
    """
    det, truth = _points(a_xyz), _points(b_xyz)
    if len(det) == 0 or len(truth) == 0:
        return Match(np.zeros((0, 2), np.int64), np.zeros(0), np.arange(len(det)), np.arange(len(truth)))
    dist = np.linalg.norm(det[:, None, :] - truth[None, :, :], axis=-1)
    within = dist <= np.broadcast_to(np.asarray(tolerance_mm, dtype=float), dist.shape)
    # A pair out of tolerance costs more than any set of valid pairs could save, so the optimum
    # maximises the number of valid pairs first.
    big = 1.0 + dist[within].sum() if within.any() else 1.0
    rows, cols = linear_sum_assignment(np.where(within, dist, big))
    good = within[rows, cols]
    rows, cols = rows[good], cols[good]
    return Match(
        pairs=np.stack([rows, cols], axis=1).astype(np.int64),
        distances_mm=dist[rows, cols],
        unmatched_detections=np.setdiff1d(np.arange(len(det)), rows).astype(np.int64),
        unmatched_truth=np.setdiff1d(np.arange(len(truth)), cols).astype(np.int64),
    )


def ratings_from_truth(calls: pd.DataFrame, truth: pd.DataFrame, voxel_size_mm: Sequence[float]) -> pd.DataFrame:
    """What a perfect rater gives back for a simulated scan (the ratings contract, docs/ratings.md):
    ``accept`` for a call of a true microbleed, ``reject`` for any other call, ``missed`` for each
    true microbleed without a call, at its true position."""
    bleeds = truth[truth["kind"] == "cmb"]
    match = match_detections(_xyz(calls), _xyz(bleeds), bleeds["diameter_mm"].to_numpy(float) / 2, voxel_size_mm)
    rating = np.full(len(calls), "reject", dtype=object)
    rating[match.pairs[:, 0]] = "accept"
    missed = np.setdiff1d(np.arange(len(bleeds)), match.pairs[:, 1])
    rows = [calls[["x", "y", "z"]].assign(rating=rating), bleeds.iloc[missed][["x", "y", "z"]].assign(rating="missed")]
    return pd.concat(rows, ignore_index=True)


def write_ratings_from_truth(truth_dir: str | Path, output_dir: str | Path, ratings_dir: str | Path,
                             labels: Sequence[str]) -> None:
    """A perfect rater's ratings tables of these scans' calls (``sub-X[_ses-Y]``), into ``ratings_dir``."""
    for label in labels:
        folder = Path(*label.split("_"), "anat")
        anat = Path(output_dir) / folder
        truth = pd.read_csv(Path(truth_dir) / folder / f"{label}_desc-truth_lesions.tsv", sep="\t")
        voxel = voxel_sizes(nib.load(anat / f"{label}{N4_MAGNITUDE}.nii.gz").affine)
        table = ratings_from_truth(pd.read_csv(anat / f"{label}_desc-cmb_detections.tsv", sep="\t"), truth, voxel)
        path = Path(ratings_dir) / ratings_table_path(label)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False)


def detection_metrics(matches: Sequence[Match]) -> dict[str, float]:
    """Cohort lesion-level metrics from per-scan matches (lesions pooled over scans).

    Sensitivity is NaN without true lesions, precision NaN without detections.
    """
    tp = sum(m.true_positives for m in matches)
    fp = sum(m.false_positives for m in matches)
    fn = sum(m.false_negatives for m in matches)
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "scans": float(len(matches)),
        "lesions": float(tp + fn),
        "detections": float(tp + fp),
        "true_positives": float(tp),
        "false_positives": float(fp),
        "false_negatives": float(fn),
        "sensitivity": sensitivity,
        "precision": precision,
        "f1": f1,
        "fp_per_scan": fp / len(matches) if matches else float("nan"),
    }


def near_truth(
    detections_xyz: npt.ArrayLike, truth_xyz: npt.ArrayLike, truth_radius_mm: npt.ArrayLike,
    voxel_size_mm: Sequence[float],
) -> npt.NDArray[np.bool_]:
    """Whether each detection lies within matching tolerance of some true lesion (not one to one)."""
    det, truth = _points(detections_xyz), _points(truth_xyz)
    if not len(det) or not len(truth):
        return np.zeros(len(det), dtype=bool)
    radius = np.broadcast_to(np.asarray(truth_radius_mm, dtype=float), (len(truth),))
    dist = np.linalg.norm(det[:, None, :] - truth[None, :, :], axis=-1)
    return (dist <= (radius + float(np.max(voxel_size_mm)))[None, :]).any(axis=1)


def calibration(probability: npt.ArrayLike, is_bleed: npt.ArrayLike, bins: int = CALIBRATION_BINS) -> dict:
    """How far the probabilities are from the observed frequencies of bleeds.

    Per equal-width bin: the number of candidates, their mean probability and the fraction that
    are bleeds (the reliability diagram as a table); ``ece`` is the count-weighted mean of
    |mean probability - fraction|; ``ece_above_0.1`` the same over the candidates of probability
    >= 0.1 only (most candidates are obvious negatives near 0, which make the whole-set ECE small).
    """
    p, y = np.asarray(probability, dtype=float).ravel(), np.asarray(is_bleed, dtype=bool).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        rows.append({"low": round(float(edges[b]), 6), "high": round(float(edges[b + 1]), 6), "candidates": n,
                     "mean_probability": float(p[members].mean()) if n else float("nan"),
                     "fraction_bleeds": float(y[members].mean()) if n else float("nan")})

    def ece(keep: npt.NDArray[np.bool_]) -> float:
        # A bin's count times |mean probability - fraction of bleeds| is |sum of probabilities - bleeds|.
        gaps = np.bincount(index[keep], p[keep], bins) - np.bincount(index[keep], y[keep], bins)
        return float(np.abs(gaps).sum() / keep.sum()) if keep.any() else float("nan")

    return {"candidates": int(len(p)), "bleeds": int(y.sum()), "ece": ece(np.ones(len(p), bool)),
            "ece_above_0.1": ece(p >= 0.1), "bins": rows}


def froc_curve(
    probabilities: Sequence[npt.ArrayLike],
    detections_xyz: Sequence[npt.ArrayLike],
    truth_xyz: Sequence[npt.ArrayLike],
    truth_radius_mm: Sequence[npt.ArrayLike],
    voxel_size_mm: Sequence[Sequence[float]],
) -> pd.DataFrame:
    """Sensitivity and false positives per scan for every useful probability threshold.

    Each argument holds one entry per scan. Detections with probability >= threshold are kept and
    re-matched one to one. Sensitivity can only change when a detection within tolerance of some
    lesion enters, and between such thresholds the false positives are fewest at the upper end,
    so only those thresholds are evaluated. Columns: threshold, sensitivity, fp_per_scan
    (thresholds descending; the first row, threshold inf, keeps nothing).
    """
    n_scans = len(probabilities)
    if not n_scans == len(detections_xyz) == len(truth_xyz) == len(truth_radius_mm) == len(voxel_size_mm):
        raise ValueError("froc_curve needs one entry per scan in every argument")
    scans = []
    per_scan = zip(probabilities, detections_xyz, truth_xyz, truth_radius_mm, voxel_size_mm)
    for prob, det, truth, radius, sizes in per_scan:
        prob, det, truth = np.asarray(prob, dtype=float).ravel(), _points(det), _points(truth)
        if len(prob) != len(det):
            raise ValueError(f"{len(prob)} probabilities for {len(det)} detections")
        radius = np.broadcast_to(np.asarray(radius, dtype=float), (len(truth),))
        near = near_truth(det, truth, radius, sizes)
        scans.append((prob, det, truth, radius, sizes, near))
    n_lesions = sum(len(s[2]) for s in scans)
    thresholds = np.unique(np.concatenate([s[0][s[5]] for s in scans] + [np.zeros(0)]))[::-1]
    rows = [(np.inf, 0.0 if n_lesions else float("nan"), 0.0)]
    for threshold in thresholds:
        tp = fp = 0
        for prob, det, truth, radius, sizes, near in scans:
            keep = prob >= threshold
            fp += int(np.count_nonzero(keep & ~near))
            match = match_detections(det[keep & near], truth, radius, sizes)
            tp += match.true_positives
            fp += match.false_positives
        rows.append((float(threshold), tp / n_lesions if n_lesions else float("nan"), fp / n_scans))
    return pd.DataFrame(rows, columns=["threshold", "sensitivity", "fp_per_scan"])


def froc(
    probabilities: Sequence[npt.ArrayLike],
    detections_xyz: Sequence[npt.ArrayLike],
    truth_xyz: Sequence[npt.ArrayLike],
    truth_radius_mm: Sequence[npt.ArrayLike],
    voxel_size_mm: Sequence[Sequence[float]],
    fp_rates: Sequence[float] = FROC_FP_RATES,
) -> dict[float, float]:
    """Best sensitivity reachable at or below each rate of false positives per scan."""
    curve = froc_curve(probabilities, detections_xyz, truth_xyz, truth_radius_mm, voxel_size_mm)
    return _sensitivity_at(curve, fp_rates)


def _sensitivity_at(curve: pd.DataFrame, fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[float, float]:
    return {
        float(rate): float(curve.loc[curve["fp_per_scan"] <= rate, "sensitivity"].max())
        for rate in fp_rates
    }


def _xyz(table: pd.DataFrame) -> npt.NDArray[np.float64]:
    return table[["x", "y", "z"]].to_numpy(dtype=float)


@dataclass(frozen=True, eq=False)
class _Scan:
    """One subject/session's truth (microbleeds only), outputs and their matches."""

    name: str
    truth: pd.DataFrame
    calls: pd.DataFrame
    candidates: pd.DataFrame
    voxel: npt.NDArray[np.float64]
    has_phase: bool
    calls_match: Match
    candidates_match: Match
    nuclei: tuple[dict, ...] = ()  # simulated iron nuclei (name, side, xyz, semi_axes_mm), if known


def _scan(name: str, folder: Path, truth: pd.DataFrame, unknown_xyz: npt.ArrayLike = ()) -> _Scan:
    """A scan's outputs (in ``folder``) matched to its ``truth`` (x y z radius_mm, world mm).

    Calls and candidates within :data:`cmbflow.ratings.MATCH_MM` of ``unknown_xyz`` (calls whose truth nobody
    knows: unrated or unsure) are left out: neither hits nor false positives.
    """
    calls = read_detections(folder / f"{name}_desc-cmb_detections.tsv")
    candidates = read_detections(folder / f"{name}_desc-candidates_detections.tsv")
    unknown = np.asarray(unknown_xyz, dtype=float).reshape(-1, 3)
    if len(unknown):
        calls = calls[match_to_calls(_xyz(calls), unknown) < 0].reset_index(drop=True)
        candidates = candidates[match_to_calls(_xyz(candidates), unknown) < 0].reset_index(drop=True)
    voxel = voxel_sizes(nib.load(folder / f"{name}{BRAIN_MASK}.nii.gz").affine)
    radius = truth["radius_mm"].to_numpy(dtype=float)
    return _Scan(
        name=name,
        truth=truth,
        calls=calls,
        candidates=candidates,
        voxel=voxel,
        # The workflow writes the high-pass phase only for scans whose phase it used.
        has_phase=(folder / f"{name}{HPPHASE}.nii.gz").exists(),
        calls_match=match_detections(_xyz(calls), _xyz(truth), radius, voxel),
        candidates_match=match_detections(_xyz(candidates), _xyz(truth), radius, voxel),
    )


def _load_scan(truth_tsv: Path, truth_dir: Path, output_dir: Path) -> _Scan | None:
    """A scan's simulated truth and outputs, or None when the workflow has no final calls for it."""
    prefix = truth_tsv.name.removesuffix("_desc-truth_lesions.tsv")
    folder = output_dir / truth_tsv.parent.relative_to(truth_dir)
    if not (folder / f"{prefix}_desc-cmb_detections.tsv").exists():
        return None
    truth = pd.read_csv(truth_tsv, sep="\t")
    truth = truth[truth["kind"] == "cmb"].reset_index(drop=True)
    scan = _scan(prefix, folder, truth.assign(radius_mm=truth["diameter_mm"] / 2))
    params = truth_tsv.with_name(f"{prefix}_desc-truth_params.json")
    nuclei = json.loads(params.read_text()).get("iron_nuclei", []) if params.exists() else []
    return replace(scan, nuclei=tuple(nuclei))


def nucleus_false_calls(scan: _Scan) -> dict[str, int]:
    """False calls at each simulated iron nucleus (within its largest semi-axis plus a margin of
    its centre), by nucleus name; a call is counted at the nearest such nucleus only."""
    false_xyz = _xyz(scan.calls)[scan.calls_match.unmatched_detections]
    if not scan.nuclei or not len(false_xyz):
        return {}
    centres = np.array([n["xyz"] for n in scan.nuclei], dtype=float)
    reach = np.array([max(n["semi_axes_mm"]) for n in scan.nuclei]) + NUCLEUS_MARGIN_MM
    dist = np.linalg.norm(false_xyz[:, None, :] - centres[None], axis=-1)
    counts: dict[str, int] = {}
    for row in dist:
        nearest = int(np.argmin(row / reach))
        if row[nearest] <= reach[nearest]:
            name = scan.nuclei[nearest]["name"]
            counts[name] = counts.get(name, 0) + 1
    return counts


def region_accuracy(scans: Sequence[_Scan], atlas: MarsAtlas) -> dict:
    """How often a call matched to a true microbleed got that microbleed's MARS region.

    The truth's region is read from the same atlas at the true MNI position, so disagreement
    measures registration and localisation error only. (The simulator's own region boxes differ
    from the atlas for 7 % of its microbleeds, measured on 227; its ``region`` column, used for
    ``per_region``, says where it placed the bleed.) ``confusion`` counts true -> called regions.
    """
    truth_regions, called = [], []
    for s in scans:
        detection, lesion = s.calls_match.pairs.T
        truth_regions += atlas.lookup(s.truth.loc[lesion, ["mni_x", "mni_y", "mni_z"]].to_numpy(float))["region"].tolist()
        called += s.calls["region"].to_numpy()[detection].tolist()
    pairs = [(str(t), str(c)) for t, c in zip(truth_regions, called)]
    confusion: dict[str, dict[str, int]] = {}
    for t, c in pairs:
        confusion.setdefault(t, {}).setdefault(c, 0)
        confusion[t][c] += 1
    agree = sum(t == c for t, c in pairs)
    return {"matched_calls": len(pairs), "accuracy": agree / len(pairs) if pairs else float("nan"),
            "confusion": confusion}


def _standing(candidates: pd.DataFrame) -> pd.DataFrame:
    never = candidates["superseded"].astype(bool)
    if "mirror_vetoed" in candidates:  # outputs of cmbflow before the veto have none
        never |= candidates["mirror_vetoed"].astype(bool)
    return candidates[~never]


def _group_figures(scans: Sequence[_Scan]) -> tuple[dict, pd.DataFrame]:
    """Call metrics, candidate recall and candidate FROC summary over ``scans``; and the FROC curve
    (of the candidates that can be calls: superseded and mirror-vetoed ones never are)."""
    standing = [_standing(s.candidates) for s in scans]
    curve = froc_curve(
        [c["probability"].to_numpy() for c in standing],
        [_xyz(c) for c in standing],
        [_xyz(s.truth) for s in scans],
        [s.truth["radius_mm"].to_numpy(dtype=float) for s in scans],
        [s.voxel for s in scans],
    )
    is_bleed = [near_truth(_xyz(c), _xyz(s.truth), s.truth["radius_mm"].to_numpy(dtype=float), s.voxel)
                for c, s in zip(standing, scans)]
    figures = {
        "scans": len(scans),
        "calls": detection_metrics([s.calls_match for s in scans]),
        "candidate_recall": detection_metrics([s.candidates_match for s in scans])["sensitivity"],
        "froc_sensitivity_at_fp_per_scan": {str(rate): sens for rate, sens in _sensitivity_at(curve).items()},
        "calibration": calibration(np.concatenate([c["probability"].to_numpy(float) for c in standing]),
                                   np.concatenate(is_bleed)),
    }
    return figures, curve


def _curve_points(curve: pd.DataFrame) -> list[list[float | None]]:
    """FROC rows as JSON-ready ``[fp_per_scan, sensitivity, threshold]`` (None for threshold inf)."""
    return [
        [float(fp), float(sens), float(t) if np.isfinite(t) else None]
        for t, sens, fp in curve[["threshold", "sensitivity", "fp_per_scan"]].itertuples(index=False)
    ]


def evaluate_outputs(truth_dir: str | Path, output_dir: str | Path) -> dict:
    """Compare a workflow's outputs with a simulator's ground truth (``derivatives/simulation``).

    Returns lesion-level metrics of the final calls, candidate-stage recall, per-region and
    per-diameter (:data:`DIAMETER_BINS_MM`) sensitivity, the FROC of the candidates'
    probabilities and, where the output has its MARS atlas (``atlas/``), the calls'
    :func:`region_accuracy`, over every subject/session that has both
    truth and outputs; ``by_phase`` repeats the main figures for the scans with phase
    (the output has a high-pass phase) and without (``magnitude_only``; a group without scans is
    left out), and ``froc_curve`` holds the curves (``all`` and per group) as
    ``[fp_per_scan, sensitivity, threshold]`` rows.
    """
    truth_dir, output_dir = Path(truth_dir), Path(output_dir)
    loaded = (_load_scan(t, truth_dir, output_dir) for t in sorted(truth_dir.rglob("*_desc-truth_lesions.tsv")))
    scans = [s for s in loaded if s is not None]
    if not scans:
        raise InputError("no subject has both ground truth and cmbflow outputs", path=output_dir,
                         fix="point TRUTH_DIR at derivatives/simulation and OUTPUT_DIR at the workflow output")
    atlas_path = output_dir / "atlas" / ATLAS_NAME
    located = {"region_accuracy": region_accuracy(scans, read_mars_atlas(atlas_path))} if atlas_path.exists() else {}
    return _results(scans, {"per_diameter": sensitivity_by_diameter(scans), **located})


def _sensitivity_by(scans: Sequence[_Scan], labels: Sequence[npt.NDArray]) -> dict:
    """The calls' sensitivity for each value of ``labels`` (per scan, one label per true lesion)."""
    labels_all = np.concatenate([np.asarray(scan_labels, dtype=object) for scan_labels in labels])
    found = np.concatenate([np.isin(np.arange(len(scan_labels)), s.calls_match.pairs[:, 1])
                            for s, scan_labels in zip(scans, labels)])
    return {value: {"lesions": int((labels_all == value).sum()),
                    "sensitivity": float(found[labels_all == value].mean())}
            for value in sorted(set(labels_all))}


def sensitivity_by_diameter(scans: Sequence[_Scan]) -> dict:
    """The calls' sensitivity per bin of :data:`DIAMETER_BINS_MM` of the true diameter."""
    edges = DIAMETER_BINS_MM
    names = [f"<{edges[0]:g} mm", *(f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:])), f">={edges[-1]:g} mm"]
    bins = [np.digitize(2 * s.truth["radius_mm"].to_numpy(dtype=float), edges) for s in scans]
    return {names[k]: v for k, v in _sensitivity_by(scans, bins).items()}


def _results(scans: Sequence[_Scan], extra: dict) -> dict:
    """The figures of :func:`evaluate_outputs` (``per_region`` only where the truth has regions)."""
    regions = _sensitivity_by(scans, [s.truth["region"].to_numpy() if "region" in s.truth else np.array([])
                                      for s in scans])
    per_scan = [
        {"scan": s.name, "phase": s.has_phase, "lesions": len(s.truth),
         "true_positives": s.calls_match.true_positives, "false_positives": s.calls_match.false_positives,
         **({"false_calls_at_iron_nuclei": nucleus_false_calls(s)} if s.nuclei else {})}
        for s in scans
    ]
    at_nuclei: dict[str, int] = {}
    for row in per_scan:
        for name, count in row.get("false_calls_at_iron_nuclei", {}).items():
            at_nuclei[name] = at_nuclei.get(name, 0) + count
    figures, curve = _group_figures(scans)
    curves = {"all": _curve_points(curve)}
    by_phase = {}
    for group, members in (("phase", [s for s in scans if s.has_phase]),
                           ("magnitude_only", [s for s in scans if not s.has_phase])):
        if members:
            by_phase[group], group_curve = _group_figures(members)
            curves[group] = _curve_points(group_curve)
    return {
        **figures,
        "candidates_per_scan": float(np.mean([len(s.candidates) for s in scans])),
        **({"per_region": regions} if regions else {}),
        **({"false_calls_at_iron_nuclei": at_nuclei} if any(s.nuclei for s in scans) else {}),
        **extra,
        "per_scan": per_scan,
        "by_phase": by_phase,
        "froc_curve": curves,
    }


def mask_lesions(path: str | Path, label: str) -> pd.DataFrame:
    """The lesions of a mask: each connected component (26-neighbours) of its non-zero voxels,
    at its centroid (world mm from the mask's affine), with its equivalent radius (of the sphere
    of its volume)."""
    try:
        img = nib.load(path)
        inside = np.asanyarray(img.dataobj) > 0
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise InputError(f"not a readable NIfTI mask ({type(err).__name__})", subject=label, path=path,
                         fix="save the lesion mask as NIfTI") from None
    if inside.ndim != 3:
        raise InputError(f"mask of shape {inside.shape} is not 3D", subject=label, path=path,
                         fix="give one 3D lesion mask per scan")
    components, n = ndimage.label(inside, structure=np.ones((3, 3, 3)))
    index = range(1, n + 1)
    centroids = ijk_to_xyz(img.affine, np.reshape(ndimage.center_of_mass(inside, components, index), (-1, 3)))
    volume = np.asarray(ndimage.sum_labels(inside, components, index), dtype=float) * abs(np.linalg.det(img.affine[:3, :3]))
    return pd.DataFrame({"x": centroids[:, 0], "y": centroids[:, 1], "z": centroids[:, 2],
                         "radius_mm": np.cbrt(3 * volume / (4 * np.pi))})


def _points_table(path: Path, label: str, columns: Sequence[str] = ("x", "y", "z")) -> pd.DataFrame:
    """A points table (x y z [radius_mm], world mm), checked; rows without x y z say "no lesion"."""
    try:
        table = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable TSV ({str(err).splitlines()[0][:120]})", subject=label, path=path,
                         fix="save it as tab-separated text") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"no column {', '.join(missing)}", subject=label, path=path,
                         fix=f"the columns are {' '.join(columns)} [radius_mm], tab-separated, world mm")
    if "radius_mm" not in table.columns:
        table["radius_mm"] = POINT_RADIUS_MM
    numbers = table[["x", "y", "z", "radius_mm"]].apply(pd.to_numeric, errors="coerce")
    bad = table[["x", "y", "z"]].notna().any(axis=1) & numbers[["x", "y", "z"]].isna().any(axis=1)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise InputError(f"row {row + 2}: x y z must be numbers (world mm)", subject=label, path=path,
                         fix="give every lesion its position, or leave x y z empty for a scan without lesions")
    return table.assign(**{c: numbers[c] for c in numbers}).fillna({"radius_mm": POINT_RADIUS_MM})


def _label_of(name: str, label: str, suffixes: Sequence[str]) -> bool:
    """Whether a file name is of scan ``label`` (not of one of its sessions) with one of ``suffixes``."""
    rest = name[len(label):]
    return (name.startswith(label) and rest.startswith("_") and not rest.startswith("_ses-")
            and any(rest.endswith(suffix) for suffix in suffixes))


def _reference(labels: Path, label: str, folder: Path) -> tuple[pd.DataFrame, npt.NDArray[np.float64]] | None:
    """One scan's true lesions (x y z radius_mm) and the positions of calls of unknown truth, from
    its manual labels, or None when the labels have none for it."""
    subject, _, session = label.partition("_")
    if labels.is_file():  # one points table for the cohort
        table = _points_table(labels, label, POINTS_COLUMNS)
        rows = table[table["participant_id"] == subject]
        if "session_id" in table.columns:
            rows = rows[rows["session_id"].fillna("") == session]
        return (rows.dropna(subset=["x", "y", "z"]).reset_index(drop=True), np.zeros((0, 3))) if len(rows) else None
    scan_dir = labels.joinpath(*label.split("_"))
    points = [p for p in scan_dir.rglob("*.tsv") if p.name == f"{label}_desc-cmb_points.tsv"]
    masks = [p for p in scan_dir.rglob(f"{label}*") if _label_of(p.name, label, MASK_SUFFIXES)]
    ratings = ratings_files(labels, label)
    found = points + masks + ratings
    if len(points) + len(masks) > 1 or (ratings and points + masks):
        raise InputError(f"{len(found)} references for one scan ({', '.join(p.name for p in found)})",
                         subject=label, path=scan_dir, fix="keep one points table, one lesion mask or the ratings")
    if points:
        return _points_table(points[0], label).dropna(subset=["x", "y", "z"]).reset_index(drop=True), np.zeros((0, 3))
    if masks:
        return mask_lesions(masks[0], label), np.zeros((0, 3))
    if not ratings:
        return None
    # Accepted calls and missed bleeds are the true bleeds, rejected calls false positives; the
    # others (unsure, unrated) nobody knows.
    calls = read_detections(folder / f"{label}_desc-cmb_detections.tsv")
    rated = rate_subject(calls, ratings, label)
    verdict = pd.Series(rated.ratings, index=calls.index, dtype=object)
    truth = pd.concat([calls.loc[verdict == "accept", ["x", "y", "z", "radius_mm"]],
                       rated.missed[["x", "y", "z"]].assign(radius_mm=POINT_RADIUS_MM)], ignore_index=True)
    return truth, _xyz(calls[~verdict.isin(["accept", "reject"])])


def evaluate_labels(labels: str | Path, output_dir: str | Path) -> dict:
    """Compare a workflow's outputs with manual labels: the figures of :func:`evaluate_outputs`
    (no region accuracy; ``per_region`` only where a points table has a ``region`` column) over
    every subject/session that has outputs and labels.

    ``labels`` is a folder holding, per scan, one of: a points table
    ``sub-X[/ses-Y]/sub-X[_ses-Y]_desc-cmb_points.tsv`` (x y z [radius_mm], world mm), a lesion
    mask ``sub-X[/ses-Y]/[anat/]sub-X[_ses-Y]_..._CMB.nii.gz`` (VALDO) or ``..._desc-cmb_mask.nii.gz``
    (connected components are lesions), or the ratings of the calls (docs/ratings.md: accepted
    calls and missed bleeds are the true bleeds, rejected calls false positives, unsure and
    unrated calls left out); or it is one points table of the cohort with columns
    ``participant_id [session_id] x y z [radius_mm]``, where a scan with a row is labelled and a
    row with empty x y z says the scan has no microbleed.
    """
    labels, output_dir = Path(labels), Path(output_dir)
    if not labels.exists():
        raise InputError("no such labels folder or points table", path=labels,
                         fix="give the folder of manual labels, or a points TSV")
    scans = []
    for calls in sorted(output_dir.glob("sub-*/**/sub-*_desc-cmb_detections.tsv")):
        label = calls.name.removesuffix("_desc-cmb_detections.tsv")
        reference = _reference(labels, label, calls.parent)
        if reference is not None:
            scans.append(_scan(label, calls.parent, *reference))
    if not scans:
        raise InputError("no subject has both manual labels and cmbflow outputs", path=labels,
                         fix="name the labels by subject (and session) as docs/evaluation.md says, and point "
                         "OUTPUT_DIR at the workflow output")
    return _results(scans, {})


def plot_froc(
    curves: Mapping[str, Sequence[Sequence[float | None]]],
    path: str | Path,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    title: str = "FROC of the candidates' microbleed probability",
) -> None:
    """Write a PNG of FROC curves (group -> rows ``[fp_per_scan, sensitivity, ...]``).

    Each curve is drawn as the best sensitivity reachable at or below each FP rate (a step line,
    carried flat to the right edge); ``operating_points`` (group -> (fp_per_scan, sensitivity))
    marks e.g. the final calls on the curve of the same colour.
    """
    # The Agg canvas directly, not pyplot: no global backend switch, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_max = 4.25
    fig = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for rate in FROC_FP_RATES:
        ax.axvline(rate, color="0.6", linestyle=":", linewidth=1)
    for index, (group, rows) in enumerate(curves.items()):
        points = np.array([[row[0], row[1]] for row in rows], dtype=float).reshape(-1, 2)
        color = f"C{index}"
        if len(points):
            best = np.fmax.accumulate(points[:, 1])
            xs = np.append(points[:, 0], max(x_max, points[-1, 0]))
            ax.step(xs, np.append(best, best[-1]), where="post", color=color, label=group)
        if operating_points and group in operating_points:
            ax.plot(*operating_points[group], marker="o", markersize=7, color=color, markeredgecolor="black")
    if operating_points:
        ax.plot([], [], marker="o", color="white", markeredgecolor="black", linestyle="none", label="final calls")
    ax.set(xlim=(0, x_max), ylim=(0, 1.02), xlabel="false positives per scan", ylabel="sensitivity", title=title)
    ax.grid(axis="y", color="0.9")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
