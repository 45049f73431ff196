"""Raters' verdicts on the calls, read back from ``ratings_dir`` (docs/ratings.md has the contract).

Per subject/session, ``RATINGS_DIR/sub-X[/ses-Y]/sub-X[_ses-Y][_rater-NAME]_desc-cmb_ratings.tsv``
(columns ``x y z rating`` and an optional ``rater``) or an edited label map
``..._desc-cmb_dseg.nii.gz`` (cmbflow.viewer wrote the original). A rating names its call by
position: within :data:`MATCH_MM` of it. The cohort uses one verdict per call, the raters'
consensus (:func:`consensus`), and reports how far raters agree (:func:`agreement`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from cmbflow.detections import SAME_LESION_MM
from cmbflow.errors import InputError
from cmbflow.image import ijk_to_xyz, voxel_sizes

RATINGS = ("accept", "reject", "unsure", "missed")
#: A rating is of the call within this distance: viewers give back the positions they were given.
MATCH_MM = 1.0
#: The rater of a file that names none (no rater- entity, no rater column).
UNNAMED = "unnamed"
_RATER = re.compile(r"_rater-([A-Za-z0-9]+)_")


def ratings_table_path(label: str) -> Path:
    """Where a ratings table of subject/session ``label`` goes, relative to the ratings folder
    (one unnamed rater's; the subject's report page downloads it under this name)."""
    return Path(*label.split("_"), f"{label}_desc-cmb_ratings.tsv")


def ratings_files(ratings_dir: str | Path, label: str) -> list[Path]:
    """The ratings of subject/session ``label`` (``sub-X`` or ``sub-X_ses-Y``): tables and label maps."""
    folder = Path(ratings_dir, *label.split("_"))
    return sorted({path for rater in ("", "_rater-*") for kind in ("ratings.tsv", "dseg.nii.gz")
                   for path in folder.glob(f"{label}{rater}_desc-cmb_{kind}")})


def read_ratings_table(path: str | Path, label: str) -> pd.DataFrame:
    """A ratings TSV as ``x y z rating rater`` rows, checked."""
    def fail(problem: str, fix: str) -> InputError:
        return InputError(problem, subject=label, path=path, fix=fix)

    try:
        table = pd.read_csv(path, sep="\t", dtype={"rating": str, "rater": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise fail(f"not a readable TSV ({str(err).splitlines()[0][:120]})", "save it as tab-separated text") from None
    missing = [c for c in ("x", "y", "z", "rating") if c not in table.columns]
    if missing:
        raise fail(f"no column {', '.join(missing)}", "the columns are x y z rating [rater], tab-separated")
    xyz = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce")
    if xyz.isna().any(axis=None):
        row = int(xyz.isna().any(axis=1).to_numpy().argmax())
        raise fail(f"row {row + 2}: x y z must be numbers (world mm)", "fill in the position of every row")
    rating = table["rating"].str.strip()
    bad = ~rating.isin(RATINGS)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise fail(f"row {row + 2}: rating {rating.iloc[row]!r} is not one of {', '.join(RATINGS)}",
                   "use one of these words")
    named = _RATER.search(Path(path).name)
    rater = table["rater"].str.strip() if "rater" in table.columns else pd.Series(UNNAMED, index=table.index)
    if named:
        if "rater" in table.columns and set(rater) != {named.group(1)}:
            raise fail(f"rater column disagrees with the file's rater-{named.group(1)}",
                       "one file per rater, or one file with a rater column")
        rater = pd.Series(named.group(1), index=table.index)
    if (rater == "").any():
        raise fail(f"row {int((rater == '').to_numpy().argmax()) + 2}: no rater", "name the rater of every row")
    return pd.DataFrame({"x": xyz.x, "y": xyz.y, "z": xyz.z, "rating": rating, "rater": rater})


def read_edited_label_map(path: str | Path, calls: pd.DataFrame, label: str) -> pd.DataFrame:
    """A rater's edited copy of ``*_desc-cmb_dseg.nii.gz`` as ratings rows.

    Label ``n`` (call ``n``, row ``n`` of the calls table) still present: accept; gone: reject.
    Each connected component of a label value that no call has: missed, at its centroid.
    """
    try:
        img = nib.load(path)
        data = np.rint(np.asanyarray(img.dataobj)).astype(np.int64)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for the rater
        raise InputError(f"not a readable NIfTI label map ({type(err).__name__})", subject=label, path=path,
                         fix="save the edited segmentation as NIfTI (.nii.gz)") from None
    if data.ndim != 3:
        raise InputError(f"label map of shape {data.shape} is not 3D", subject=label, path=path,
                         fix="save the edited segmentation as a 3D NIfTI")
    present = set(np.unique(data).tolist())
    numbers = np.arange(1, len(calls) + 1)
    kept = [n for n in numbers.tolist() if n in present]
    # A map of other calls (the model rerun since) would rate the wrong calls: each kept label
    # must still lie about where its call is.
    centres = ijk_to_xyz(img.affine, np.reshape(ndimage.center_of_mass(data > 0, data, kept), (-1, 3)))
    kept_rows = np.array(kept, dtype=int) - 1
    slack = calls["radius_mm"].to_numpy(float)[kept_rows] + voxel_sizes(img.affine).max()
    off = np.linalg.norm(centres - calls[["x", "y", "z"]].to_numpy(float)[kept_rows], axis=1) > slack
    if off.any():
        n = kept[int(np.argmax(off))]
        raise InputError(f"label {n} is not where call {n} of the calls table is", subject=label, path=path,
                         fix="rate the label map of the current calls (*_desc-cmb_dseg.nii.gz in the output)")
    rows = [calls[["x", "y", "z"]].assign(rating=np.where(np.isin(numbers, kept), "accept", "reject"))]
    for value in sorted(present - {0} - set(numbers.tolist())):
        components, n = ndimage.label(data == value, structure=np.ones((3, 3, 3)))
        centroids = ndimage.center_of_mass(components > 0, components, range(1, n + 1))
        xyz = ijk_to_xyz(img.affine, np.reshape(centroids, (-1, 3)))
        rows.append(pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "rating": "missed"}))
    named = _RATER.search(Path(path).name)
    return pd.concat(rows, ignore_index=True).assign(rater=named.group(1) if named else UNNAMED)


def match_to_calls(ratings_xyz: npt.ArrayLike, calls_xyz: npt.ArrayLike,
                   tolerance_mm: float = MATCH_MM) -> npt.NDArray[np.int64]:
    """For each rating, the row of its call, or -1: one-to-one, nearest pairs first, within ``tolerance_mm``."""
    ratings_xyz = np.asarray(ratings_xyz, dtype=float).reshape(-1, 3)
    calls_xyz = np.asarray(calls_xyz, dtype=float).reshape(-1, 3)
    matched = np.full(len(ratings_xyz), -1)
    if not len(ratings_xyz) or not len(calls_xyz):
        return matched
    pairs = cKDTree(ratings_xyz).sparse_distance_matrix(cKDTree(calls_xyz), tolerance_mm, output_type="ndarray")
    taken = set()
    for rating, call, _ in sorted(pairs.tolist(), key=lambda pair: pair[2]):
        if matched[int(rating)] < 0 and int(call) not in taken:
            matched[int(rating)] = int(call)
            taken.add(int(call))
    return matched


def consensus(verdicts: Sequence[str]) -> str | None:
    """One call's rating from its raters' verdicts: the majority of accept and reject; a tie, or
    only unsure, is unsure; no verdict is None."""
    if not verdicts:
        return None
    accept, reject = verdicts.count("accept"), verdicts.count("reject")
    return "accept" if accept > reject else "reject" if reject > accept else "unsure"


def missed_bleeds(missed: pd.DataFrame, raters: Sequence[str]) -> pd.DataFrame:
    """The bleeds that at least half of ``raters`` marked missed, at the mean of their marks.

    Raters click a missed bleed independently, not at a given position, so marks by different
    raters within :data:`SAME_LESION_MM` of a bleed's first mark are that bleed (one per rater).
    """
    groups: list[list[int]] = []
    xyz = missed[["x", "y", "z"]].to_numpy(float)
    rater = missed["rater"].to_numpy()
    for row in range(len(missed)):
        home = next((g for g in groups if rater[row] not in rater[g]
                     and np.linalg.norm(xyz[row] - xyz[g[0]]) <= SAME_LESION_MM), None)
        if home is None:
            groups.append([row])
        else:
            home.append(row)
    kept = [g for g in groups if 2 * len(g) >= len(raters)]
    centres = np.reshape([xyz[g].mean(axis=0) for g in kept], (-1, 3))
    return pd.DataFrame(centres, columns=["x", "y", "z"]).assign(n_raters=[len(g) for g in kept])


@dataclass(frozen=True)
class SubjectRatings:
    """One subject's ratings: each rater's verdict per call (rows = calls, columns = raters; None
    where a rater gave none), the consensus per call, and the missed bleeds the raters agree on."""

    verdicts: pd.DataFrame
    ratings: list[str | None]
    missed: pd.DataFrame


def rate_subject(calls: pd.DataFrame, files: Sequence[str | Path], label: str) -> SubjectRatings:
    """Read, check and combine a subject's ratings files against its calls (the cohort's final calls table)."""
    per_file = {Path(f): (read_edited_label_map(f, calls, label) if str(f).endswith(".nii.gz")
                          else read_ratings_table(f, label)) for f in files}
    seen: dict[str, Path] = {}
    for path, table in per_file.items():
        for rater in table["rater"].unique():
            if rater in seen:
                raise InputError(f"rater {rater} also rated in {seen[rater].name}", subject=label, path=path,
                                 fix="one file per rater (or one file with a rater column)")
            seen[rater] = path
    calls_xyz = calls[["x", "y", "z"]].to_numpy(float)
    verdicts = pd.DataFrame(None, index=calls.index, columns=sorted(seen), dtype=object)
    missed = []
    for path, table in per_file.items():
        for rater, rows in table.groupby("rater", sort=False):
            is_missed = (rows["rating"] == "missed").to_numpy()
            xyz = rows[["x", "y", "z"]].to_numpy(float)
            near = match_to_calls(xyz[is_missed], calls_xyz)
            if (near >= 0).any():
                raise InputError(f"{_where(path, rows, rows.index[is_missed][int(np.argmax(near >= 0))])} is within "
                                 f"{MATCH_MM:g} mm of a call", subject=label, path=path,
                                 fix="rate a call with accept, reject or unsure; missed is for bleeds without a call")
            matched = match_to_calls(xyz[~is_missed], calls_xyz)
            if (matched < 0).any():
                raise InputError(f"{_where(path, rows, rows.index[~is_missed][int(np.argmax(matched < 0))])} is "
                                 f"not within {MATCH_MM:g} mm of a call of its own", subject=label, path=path,
                                 fix="give a call's position from the calls table (one row per call and rater), "
                                 "or rate a bleed without a call as missed")
            verdicts.loc[calls.index[matched], rater] = rows.rating.to_numpy()[~is_missed]
            missed.append(rows[is_missed])
    missed_rows = pd.concat(missed) if missed else pd.DataFrame(columns=["x", "y", "z", "rater"])
    return SubjectRatings(
        verdicts=verdicts,
        ratings=[consensus([v for v in row if pd.notna(v)]) for row in verdicts.itertuples(index=False)],
        missed=missed_bleeds(missed_rows, sorted(seen)),
    )


def _where(path: Path, rows: pd.DataFrame, row: int) -> str:
    """A rating in an error message: its line in a table, and its position in either kind of file."""
    line = "" if path.name.endswith(".nii.gz") else f"row {row + 2}: "
    return f"{line}{rows.rating[row]} at ({rows.x[row]:g}, {rows.y[row]:g}, {rows.z[row]:g})"


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' verdicts on the same items; NaN when chance agreement is
    certain (both gave one and the same verdict throughout, or no items)."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if not len(a):
        return float("nan")
    observed = float(np.mean(a == b))
    chance = sum(float(np.mean(a == k)) * float(np.mean(b == k)) for k in set(a) | set(b))
    return float("nan") if chance == 1 else (observed - chance) / (1 - chance)


def agreement(verdicts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Agreement of every pair of raters, pooled over subjects: on the calls both rated, the
    fraction with the same verdict (accept, reject or unsure) and Cohen's kappa."""
    table = pd.concat(verdicts, ignore_index=True) if verdicts else pd.DataFrame()
    rows = []
    for a, b in combinations(sorted(table.columns), 2):
        both = table[[a, b]].dropna()
        rows.append({"rater_a": a, "rater_b": b, "n_calls": len(both),
                     "percent_agreement": 100 * float(np.mean(both[a] == both[b])) if len(both) else float("nan"),
                     "cohen_kappa": cohen_kappa(both[a].tolist(), both[b].tolist())})
    return pd.DataFrame(rows, columns=["rater_a", "rater_b", "n_calls", "percent_agreement", "cohen_kappa"])
