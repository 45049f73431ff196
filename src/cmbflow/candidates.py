"""Microbleed candidates: FRST peaks fused with dark-spot components, and their features.

The goal of this stage is recall: every true microbleed should become a candidate. Two
generators run on the image divided by a robust local background (so thresholds are contrasts,
independent of scanner scaling and bias residue):

* ``frst``: local maxima of the dark-blob radial symmetry transform (:func:`cmbflow.frst.frst3d`);
* ``threshold``: connected components of dark voxels whose equivalent diameter fits a microbleed,
  taken at several depths (:func:`dark_components`).

Seeds are moved to the darkest voxel nearby and merged by distance (non-maximum suppression);
after measuring, candidates whose centres are as close are merged again (:func:`drop_repeated_centres`).
Each candidate is then measured against its own surroundings (a bleed inside a dark, iron-rich
nucleus keeps its contrast and shape; see :func:`lesion_region`) and gets the shape, contrast
and phase features (reported in the candidates table). Candidates fainter than
``min_contrast`` or smaller than ``min_radius_mm`` are dropped. Stage 2 (:mod:`cmbflow.model`)
decides which candidates are microbleeds.

The defaults favour recall, since stage 2 removes false candidates: on six ``training``-preset
scans (seed 3000; 0.5-2.9 mm voxels, SNR 10-35) lowering ``frst_threshold`` 0.02 -> 0.01,
``min_contrast`` 0.4 -> 0.25, ``min_radius_mm`` 0.9 -> 0.6 and ``min_diameter_mm`` 2 -> 1.2
raised candidate recall from 0.912 to 0.989 (91 bleeds; the missed were faint bleeds of 1-1.9 mm
true diameter in 2-3 mm slices), at the cost of up to ``max_candidates`` (2000) candidates on
the noisiest scans (SNR 10-15).
"""

from __future__ import annotations

from typing import Sequence

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from cmbflow.config import CandidateParams
from cmbflow.detections import keep_first_within
from cmbflow.frst import frst3d
from cmbflow.image import b0_direction_voxel, ijk_to_xyz, mask_box, voxel_sizes

#: Columns of the candidate table, in order.
CANDIDATE_COLUMNS = (
    "x", "y", "z", "i", "j", "k", "radius_mm", "volume_mm3", "frst", "contrast", "roundness",
    "elongation", "phase_dipole", "edge_distance_mm", "source",
)


def local_background(
    data: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    voxel_size_mm: Sequence[float],
    sigma_mm: float,
    exclude_below: float,
) -> npt.NDArray[np.float32]:
    """Robust smooth background intensity inside ``mask`` (Gaussian normalised convolution).

    A second pass leaves out voxels darker than ``exclude_below`` times the first estimate.
    """
    sigma = sigma_mm / np.asarray(voxel_size_mm, dtype=float)

    def smooth_within(weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        num = ndimage.gaussian_filter(data * weights, sigma, mode="constant")
        den = ndimage.gaussian_filter(weights, sigma, mode="constant")
        return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)

    data = np.asarray(data, dtype=np.float32)
    first = smooth_within(mask.astype(np.float32))
    keep = mask & (data > exclude_below * first)
    second = smooth_within(keep.astype(np.float32))
    return np.where(second > 0, second, first)


def contrast_ratio(
    data: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_], voxel_size_mm: Sequence[float], params: CandidateParams
) -> npt.NDArray[np.float32]:
    """Intensity / local background inside the mask, 1 outside (so the mask edge is invisible)."""
    background = local_background(data, mask, voxel_size_mm, params.background_sigma_mm, params.background_exclude)
    ratio = np.ones(data.shape, dtype=np.float32)
    ok = mask & (background > 0)
    ratio[ok] = data[ok] / background[ok]
    return ratio


def ball_footprint(radius_mm: float, voxel_size_mm: Sequence[float]) -> npt.NDArray[np.bool_]:
    """Boolean ball of ``radius_mm`` on the (anisotropic) voxel grid."""
    sizes = np.asarray(voxel_size_mm, dtype=float)
    half = np.floor(radius_mm / sizes).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sizes)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def frst_peaks(
    frst: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_], footprint: npt.NDArray[np.bool_], threshold: float
) -> npt.NDArray[np.int64]:
    """Voxel indices (N, 3) of local maxima of ``frst`` above ``threshold`` inside ``mask``."""
    peak = (frst == ndimage.maximum_filter(frst, footprint=footprint)) & (frst > threshold) & mask
    return np.argwhere(peak)


def dark_components(
    ratio: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    voxel_size_mm: Sequence[float],
    params: CandidateParams,
) -> npt.NDArray[np.int64]:
    """Darkest voxel (N, 3) of each dark component whose equivalent diameter fits a microbleed,
    with components taken at each of ``params.component_contrasts``.

    One level is not enough: at long echo times or in an atrophied brain, a bleed at the shallow
    level is part of a dark region far larger than any bleed, and only separates from it at a
    deeper level.
    """
    voxel_volume = float(np.prod(voxel_size_mm))
    found = [np.zeros((0, 3), dtype=np.int64)]
    for contrast in params.component_contrasts:
        labels, n = ndimage.label(mask & (ratio < 1.0 - contrast))
        if n == 0:
            continue
        diameter = (6.0 * np.bincount(labels.ravel())[1:] * voxel_volume / np.pi) ** (1.0 / 3.0)
        keep = 1 + np.nonzero((diameter >= params.min_diameter_mm) & (diameter <= params.max_diameter_mm))[0]
        if keep.size:
            found.append(darkest_voxels(ratio, labels, keep))
    return np.unique(np.concatenate(found), axis=0)


def darkest_voxels(
    values: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], index: npt.NDArray[np.integer]
) -> npt.NDArray[np.int64]:
    """Voxel (N, 3) of the lowest value of each label in ``index`` (of equal ones, the first in
    C order): ``ndimage.minimum_position`` without its sort of the whole volume (3.8 s -> 0.03 s
    on a 0.5 mm scan)."""
    wanted = np.zeros(int(labels.max()) + 1, dtype=bool)
    wanted[index] = True
    flat = np.flatnonzero(wanted[labels])
    label, value = labels.ravel()[flat], values.ravel()[flat]
    lowest = np.full(wanted.size, np.inf, dtype=value.dtype)
    np.minimum.at(lowest, label, value)
    at_lowest = value == lowest[label]
    found, first = np.unique(label[at_lowest], return_index=True)
    position = flat[at_lowest][first][np.searchsorted(found, index)]
    return np.stack(np.unravel_index(position, labels.shape), axis=1).astype(np.int64)


def distance_to_outside(
    mask: npt.NDArray[np.bool_], points: npt.NDArray[np.int64], voxel_size_mm: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Euclidean distance (mm) from each voxel in ``points`` to the nearest voxel outside ``mask``
    (beyond the array counts as outside): the distance transform at those voxels only.

    The nearest outside voxel always has a face neighbour inside (else the neighbour towards the
    point would be outside and nearer), so only those border voxels are searched: 0.3 s against
    2.2 s for the whole-volume transform on a 0.5 mm scan.
    """
    padded = np.pad(mask, 1)
    border = ~padded & ndimage.binary_dilation(padded)
    tree = cKDTree((np.argwhere(border) - 1) * voxel_size_mm)
    return tree.query(np.asarray(points, dtype=float).reshape(-1, 3) * voxel_size_mm)[0]


def darkest_nearby(
    ratio: npt.NDArray[np.floating], seeds: npt.NDArray[np.int64], footprint: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Move each seed to the darkest voxel within ``footprint`` around it (of equally dark ones,
    the first in the footprint's order)."""
    offsets = np.argwhere(footprint) - np.array(footprint.shape) // 2
    moved = np.empty_like(seeds)
    for start in range(0, len(seeds), 4096):  # bounded memory: (seeds, footprint voxels, 3) at a time
        near = seeds[start:start + 4096, None, :] + offsets[None]
        inside = np.all((near >= 0) & (near < ratio.shape), axis=2)
        values = np.where(inside, ratio[tuple(np.clip(near, 0, np.array(ratio.shape) - 1).transpose(2, 0, 1))], np.inf)
        moved[start:start + 4096] = near[np.arange(len(near)), np.argmin(values, axis=1)]
    return moved


def merge_seeds(
    seeds: npt.NDArray[np.int64],
    sources: npt.NDArray[np.str_],
    ratio: npt.NDArray[np.floating],
    affine: npt.NDArray[np.floating],
    distance_mm: float,
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Greedy non-maximum suppression, darkest first; a kept seed inherits merged seeds' sources."""
    if len(seeds) == 0:
        return seeds, []
    seeds, first = np.unique(seeds, axis=0, return_inverse=True)
    by_voxel: list[set[str]] = [set() for _ in range(len(seeds))]
    for idx, src in zip(first.ravel(), sources):
        by_voxel[idx].add(str(src))
    order = np.lexsort((*seeds.T[::-1], ratio[tuple(seeds.T)]))  # darkest first; ties by index
    xyz = ijk_to_xyz(affine, seeds)
    tree = cKDTree(xyz)
    taken = np.zeros(len(seeds), dtype=bool)
    kept, kept_sources = [], []
    for idx in order:
        if taken[idx]:
            continue
        group = [g for g in tree.query_ball_point(xyz[idx], distance_mm) if not taken[g]]
        taken[group] = True
        names = set().union(*(by_voxel[g] for g in group))
        kept.append(seeds[idx])
        kept_sources.append("both" if len(names) > 1 else names.pop())
    return np.array(kept, dtype=np.int64).reshape(-1, 3), kept_sources


def radial_median_profile(
    values: npt.NDArray[np.floating], dist: npt.NDArray[np.floating], step: float
) -> tuple[npt.NDArray[np.float64], float]:
    """Median of ``values`` in shells ``[n*step, (n+1)*step)`` of ``dist``; NaN for empty shells."""
    shell = (dist / step).astype(np.int64).ravel()
    flat = values.ravel()
    # One float sort key, shell index + a monotone squashing of the value into [0, 1): sorts by
    # shell, then by value, about twice as fast as lexsort.
    order = np.argsort(shell + (np.arctan(flat) / np.pi + 0.5) * 0.999)
    shell, flat = shell[order], flat[order]
    bounds = np.searchsorted(shell, np.arange(shell[-1] + 2))
    start, stop = bounds[:-1], bounds[1:]
    filled = stop > start
    lower = flat[np.where(filled, (start + stop - 1) // 2, 0)]
    upper = flat[np.where(filled, (start + stop) // 2, 0)]
    return np.where(filled, 0.5 * (lower + upper), np.nan), step


def lesion_region(
    ratio: npt.NDArray[np.floating], seed: npt.NDArray[np.int64], voxel_size_mm: npt.NDArray[np.float64],
    params: CandidateParams,
) -> tuple[npt.NDArray[np.int64], float]:
    """The dark region around ``seed`` at half its depth below its own surroundings.

    The local background is the median of a shell just outside the lesion, found from the radial
    profile of shell medians (which a vein or a darker nucleus touching the lesion barely moves):
    starting from the brightest shell median within ``background_search_mm``, two rounds settle
    radius and background. The region is the face-connected set of voxels at
    or below half depth, kept within twice the radius (plus two voxels) of the seed so that a
    touching dark structure cannot inflate it much, while a vessel still shows as elongated.
    Returns the region's voxels (N, 3) and the local background (in ratio units).
    """
    half = np.ceil(params.region_half_width_mm / voxel_size_mm).astype(int)
    lo = np.maximum(seed - half, 0)
    hi = np.minimum(seed + half + 1, ratio.shape)
    crop = ratio[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    local = tuple(seed - lo)
    # Distances in mm along the array axes (exact for non-oblique grids, close for oblique ones).
    grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, seed, voxel_size_mm)], indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grid))
    ball = dist <= params.region_half_width_mm
    profile, step = radial_median_profile(crop[ball], dist[ball], 0.5 * float(voxel_size_mm.min()))

    darkest = float(crop[local])
    # Start from the brightest shell median near the seed, not from the scan's background (1):
    # where the tissue around a bleed is itself dark (white matter beside bright CSF at a long
    # echo time, an iron-rich nucleus) the half-depth level of 1 would take in all of it. The
    # first shell holds the seed, so there is always one.
    background = float(np.nanmax(profile[np.arange(len(profile)) * step <= params.background_search_mm]))
    radius = float(voxel_size_mm.min())
    for _ in range(2):
        level = 0.5 * (darkest + background)
        above = np.nonzero(profile >= level)[0]
        radius = max(float(above[0]) * step if above.size else params.region_half_width_mm, float(voxel_size_mm.min()))
        shell = (dist > radius + 1.0) & (dist <= radius + 1.0 + params.background_shell_mm)
        if shell.any():
            background = float(np.median(crop[shell]))
    level = 0.5 * (darkest + background)
    within = dist <= 2.0 * radius + 2.0 * float(voxel_size_mm.max())
    labels, _ = ndimage.label((crop <= level) & within)
    # The seed is below the level unless its surroundings are darker still (then it is no lesion).
    region = np.argwhere(labels == labels[local]) if labels[local] else np.array([local])
    return region + lo, background


def shape_features(
    region: npt.NDArray[np.int64], affine: npt.NDArray[np.floating]
) -> tuple[float, float, float, float]:
    """Apparent radius, volume, roundness and elongation of a voxel region (all in mm).

    Principal axes come from the covariance of voxel centres in world mm plus the variance of a
    uniform voxel, so a one-voxel region is a (voxel-shaped) blob rather than a point.
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    volume = len(region) * abs(np.linalg.det(linear))
    radius = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
    points = region @ linear.T
    cov = np.cov(points.T, bias=True) if len(region) > 1 else np.zeros((3, 3))
    cov = cov + linear @ linear.T / 12.0
    eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
    axes = np.sqrt(np.maximum(eig, 1e-12))
    return radius, volume, axes[2] / axes[0], axes[0] / axes[1]


def phase_dipole(
    phase: npt.NDArray[np.floating],
    centre_ijk: npt.NDArray[np.floating],
    affine: npt.NDArray[np.floating],
    inner_mm: float,
    outer_mm: float,
    paramagnetic_sign: int,
) -> float:
    """Phase in the lobes along B0 minus phase in the equatorial ring, in a shell around a centre.

    Lobes lie within 35 deg of B0, the ring beyond 70 deg. A paramagnetic source raises the field
    in the lobes and lowers it in the ring, so its lobe phase has the sign ``paramagnetic_sign``;
    multiplying by that sign makes paramagnetic sources (microbleeds) positive and diamagnetic
    ones (calcifications) negative. NaN when the shell holds no lobe or no ring voxel.
    """
    sizes = voxel_sizes(affine)
    half = np.ceil(outer_mm / sizes).astype(int)
    centre = np.asarray(centre_ijk, dtype=float)
    base = np.round(centre).astype(int)
    lo = np.maximum(base - half, 0)
    hi = np.minimum(base + half + 1, phase.shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    offset_mm = (grid - centre) * sizes
    dist = np.linalg.norm(offset_mm, axis=-1)
    along_b0 = offset_mm @ b0_direction_voxel(affine)
    cos2 = np.divide(along_b0**2, dist**2, out=np.zeros_like(dist), where=dist > 0)
    shell = (dist >= inner_mm) & (dist <= outer_mm)
    lobes = shell & (cos2 >= np.cos(np.radians(35.0)) ** 2)
    ring = shell & (cos2 <= np.cos(np.radians(70.0)) ** 2)
    if not lobes.any() or not ring.any():
        return float("nan")
    crop = phase[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return float(paramagnetic_sign * (crop[lobes].mean() - crop[ring].mean()))


def find_candidates(
    image: nib.Nifti1Image,
    mask: npt.NDArray[np.bool_],
    hp_phase: npt.NDArray[np.floating] | None,
    params: CandidateParams = CandidateParams(),
    device: str | torch.device = "cpu",
    *,
    paramagnetic_sign: int = -1,
) -> pd.DataFrame:
    """Microbleed candidates of one scan with their features, one row per candidate.

    ``image`` is the (bias-corrected) magnitude or the SWI; ``hp_phase`` is the high-pass
    filtered phase (radians) on the same grid, or None; ``paramagnetic_sign`` is the sign of the
    phase that paramagnetic sources give. Pass the magnitude where you can: the SWI phase mask
    darkens a bleed's dipole lobes too, which stretches it along B0 and makes it look less round
    (on simulated scans median roundness 0.40 on SWI vs 0.72 on magnitude). Columns: see
    :data:`CANDIDATE_COLUMNS`: ``x y z`` is the contrast-weighted centre of the dark region (world
    RAS+ mm) and ``i j k`` the voxel that contains it; ``frst`` is the largest response over the
    region; ``phase_dipole`` is NaN without phase. Rows come darkest first.
    """
    if paramagnetic_sign not in (-1, 1):
        raise ValueError(f"paramagnetic_sign must be -1 or +1, got {paramagnetic_sign}")
    data = np.asarray(image.get_fdata(dtype=np.float32))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape or (hp_phase is not None and np.shape(hp_phase) != data.shape):
        raise ValueError(f"image {data.shape}, mask {mask.shape} and phase must share one grid")
    sizes = voxel_sizes(image.affine)
    if not mask.any():
        return _table([])
    # Work in the mask's bounding box plus the widest neighbourhood a candidate looks at: the
    # result is the same (everything outside is outside the mask) and the whole-volume filters
    # cost half as much on a typical field of view.
    box = mask_box(mask, np.ceil(params.region_half_width_mm / sizes).astype(int))
    lo = np.array([s.start for s in box])
    data, mask = data[box], mask[box]
    hp_phase = None if hp_phase is None else np.asarray(hp_phase, dtype=np.float32)[box]
    affine = image.affine @ nib.affines.from_matvec(np.eye(3), lo)

    ratio = contrast_ratio(data, mask, sizes, params)
    # Clipping at 1 keeps only the gradients of dark structures: bright noise casts no votes.
    frst = frst3d(
        np.clip(ratio, 0.0, 1.0), sizes, params.frst_radii_mm, mask=mask, alpha=params.frst_alpha,
        gradient_quantile=params.frst_gradient_quantile, device=device,
    )
    footprint = ball_footprint(params.peak_distance_mm, sizes)
    from_frst = frst_peaks(frst, mask, footprint, params.frst_threshold)
    from_threshold = dark_components(ratio, mask, sizes, params)
    seeds = darkest_nearby(ratio, np.concatenate([from_frst, from_threshold]), footprint)
    sources = np.array(["frst"] * len(from_frst) + ["threshold"] * len(from_threshold))
    dark_enough = ratio[tuple(seeds.T)] <= 1.0 - params.seed_contrast
    seeds, sources = merge_seeds(seeds[dark_enough], sources[dark_enough], ratio, affine, params.merge_distance_mm)
    seeds, sources = seeds[: params.max_candidates], sources[: params.max_candidates]

    edge_distance = distance_to_outside(mask, seeds, sizes)
    # Seeds come darkest first: a seed inside the region of a darker round candidate is the same
    # lesion (a large bleed has a flat dark core). Elongated regions claim nothing, so a bleed
    # touching a vein survives, and nor do regions larger than any bleed (a nucleus dark at a
    # long echo time), so a bleed inside one survives.
    claimed = np.zeros(ratio.shape, dtype=bool)
    rows = []
    for n, (seed, source) in enumerate(zip(seeds, sources)):
        if claimed[tuple(seed)]:
            continue
        region, background = lesion_region(ratio, seed, sizes, params)
        darkest = float(ratio[tuple(seed)])
        contrast = 1.0 - darkest / background if background > 0 else 0.0
        if contrast < params.min_contrast:
            continue
        radius, volume, roundness, elongation = shape_features(region, affine)
        if radius < params.min_radius_mm:
            continue
        if roundness >= params.claim_roundness and radius <= params.max_diameter_mm / 2.0:
            claimed[tuple(region.T)] = True
        near = np.linalg.norm((region - seed) * sizes, axis=1) <= params.centroid_radius_mm
        weights = 0.5 * (darkest + background) - ratio[tuple(region[near].T)] + 1e-6
        centre = (region[near] * weights[:, None]).sum(axis=0) / weights.sum()
        dipole = (
            float("nan") if hp_phase is None else phase_dipole(
                hp_phase, centre, affine, max(radius / 2.0, float(sizes.max())),
                radius + params.dipole_shell_mm, paramagnetic_sign,
            )
        )
        rows.append((
            *ijk_to_xyz(affine, centre)[0], *(np.rint(centre).astype(np.int64) + lo), radius, volume,
            float(frst[tuple(region.T)].max()), contrast,
            roundness, elongation, dipole, float(edge_distance[n]), source,
        ))
    return drop_repeated_centres(_table(rows), params.merge_distance_mm)


def drop_repeated_centres(table: pd.DataFrame, distance_mm: float) -> pd.DataFrame:
    """Keep only the first (darkest) of candidates whose centres lie within ``distance_mm``.

    Two seeds more than the merge distance apart in one large, blooming bleed can grow the same
    region (a bleed stretched along B0 is not round enough to claim the other seed) and so get
    the same centre. Left in, one lesion is two candidates: on the validation cohort (seed 4000)
    such repeats were the highest-scoring false positives, and in training they taught the
    classifier to call a true bleed a non-bleed.
    """
    keep = keep_first_within(table[["x", "y", "z"]].to_numpy(dtype=float), distance_mm)
    return table[keep].reset_index(drop=True)


def _table(rows: list[tuple]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    return table.astype({"i": np.int64, "j": np.int64, "k": np.int64, "phase_dipole": np.float64})
