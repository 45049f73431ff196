"""Fixed-size physical patches around candidates: the classifier's view of a scan.

A patch is a cube of ``PATCH_MM`` world millimetres centred on the candidate, sampled on a
``PATCH_SIZE``^3 grid along the world (RAS+) axes. Sampling in world space makes the network
independent of voxel size and array order, and puts B0 (world z for scanner-aligned images) on
the patch's last axis, where the phase dipole pattern of a bleed is oriented.

Channels: the bias-corrected magnitude divided by its brain median (tissue near 1, a bleed
near 0), and, when there is phase, the high-pass phase signed so that paramagnetic sources are
positive, clipped to +-pi and divided by pi.

A model may also take a wider view of the same kinds, ``context_mm`` across on the same grid
(``TrainParams.context_mm``; 40 mm = 2.5 mm samples of the image smoothed to that spacing): a reader dismisses a
dark dot whose vein goes on beyond the small patch, or that is one end of a nucleus. Channels are
ordered magnitude (small, wide), then phase (small, wide), so a magnitude-only input is always the
first channels of a phase one.

Beside the patch the network gets stage 1's measurements of the candidate (:func:`candidate_features`):
on the validation cohort they alone ranked candidates better at low false-positive rates than
the patch alone, and the two together better than either.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from cmbflow.config import CandidateParams
from cmbflow.image import ijk_to_xyz, mask_box, voxel_sizes, xyz_to_ijk
from cmbflow.transforms import Transforms, points_from_mni

PATCH_MM = 20.0
PATCH_SIZE = 16
_MAGNITUDE_CLIP = 2.0

#: Protocols of the scans the shipped classifier was trained on (the QC pages warn beyond them):
#: voxel sizes in-plane and slice thickness in mm, echo times in ms and field strengths in tesla.
TRAINED_IN_PLANE_MM = (0.5, 1.0)
TRAINED_SLICE_MM = (1.5, 3.0)
TRAINED_ECHO_TIME_MS = (15.0, 40.0)
TRAINED_FIELD_T = (1.5, 3.0)


def patch_offsets_mm(size: int = PATCH_SIZE, extent_mm: float = PATCH_MM) -> npt.NDArray[np.float64]:
    """World offsets (size^3, 3) of the patch grid's sample points from its centre, in mm."""
    spacing = extent_mm / size
    axis = (np.arange(size) - (size - 1) / 2.0) * spacing
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3)


def sample_patches(
    volume: npt.NDArray[np.floating],
    affine: npt.NDArray[np.float64],
    centres_xyz: npt.ArrayLike,
    size: int = PATCH_SIZE,
    extent_mm: float = PATCH_MM,
) -> npt.NDArray[np.float32]:
    """Trilinear samples (n, size, size, size) of ``volume`` on world-aligned patches.

    Points outside the field of view take the nearest edge value, so a candidate near the edge
    of the image gets a patch that does not invent a dark border.
    """
    centres = np.asarray(centres_xyz, dtype=float).reshape(-1, 3)
    return _sample_voxels(volume, _patch_voxels(affine, centres, size, extent_mm)).reshape(len(centres), *[size] * 3)


def _patch_voxels(affine: npt.NDArray[np.float64], centres: npt.NDArray[np.float64], size: int = PATCH_SIZE,
                  extent_mm: float = PATCH_MM) -> npt.NDArray[np.float64]:
    """Voxel coordinates (3, n * size^3) of the patches' sample points, for every channel alike."""
    points = centres[:, None, :] + patch_offsets_mm(size, extent_mm)[None]
    return _world_to_voxel(affine, points.reshape(-1, 3))


def _world_to_voxel(affine: npt.NDArray[np.float64], points_xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Voxel coordinates (3, N), C-contiguous as map_coordinates reads them, of world points (N, 3)."""
    inverse = np.linalg.inv(affine)
    return np.ascontiguousarray((np.asarray(points_xyz, dtype=float) @ inverse[:3, :3].T + inverse[:3, 3]).T)


def _sample_voxels(volume: npt.NDArray[np.floating], voxels: npt.NDArray[np.float64], order: int = 1,
                   mode: str = "nearest", cval: float = 0.0) -> npt.NDArray[np.float32]:
    values = ndimage.map_coordinates(np.asarray(volume, dtype=np.float32), voxels, order=order, mode=mode, cval=cval)
    return values.astype(np.float32, copy=False)


def sample_world(
    volume: npt.NDArray[np.floating],
    affine: npt.NDArray[np.float64],
    points_xyz: npt.NDArray[np.float64],
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Values of ``volume`` at world points (N, 3, RAS+ mm), interpolated with spline ``order``."""
    return _sample_voxels(volume, _world_to_voxel(affine, points_xyz), order, mode, cval)


def magnitude_reference(magnitude: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_]) -> float:
    """The brain median of the magnitude: the scale that makes tissue about 1."""
    values = np.asarray(magnitude)[np.asarray(mask, dtype=bool)]
    reference = float(np.median(values)) if values.size else 0.0
    if not np.isfinite(reference) or reference <= 0:
        raise ValueError("the magnitude has no positive signal inside the brain mask")
    return reference


def views(context_mm: float) -> int:
    """Views per image kind: the patch, and the wide view when ``context_mm`` is not 0."""
    return 2 if context_mm else 1


def candidate_patches(
    magnitude: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    affine: npt.NDArray[np.float64],
    centres_xyz: npt.ArrayLike,
    hp_phase: npt.NDArray[np.floating] | None = None,
    paramagnetic_sign: int = -1,
    context_mm: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Classifier input (n, channels, S, S, S): magnitude, plus signed phase when given; each also
    as a ``context_mm`` wide view when that is not 0."""
    centres = np.asarray(centres_xyz, dtype=float).reshape(-1, 3)
    shape = (len(centres), *[PATCH_SIZE] * 3)
    extents = [PATCH_MM] + ([context_mm] if context_mm else [])
    voxels = [_patch_voxels(affine, centres, extent_mm=extent) for extent in extents]  # shared by the kinds
    reference = magnitude_reference(magnitude, mask)
    channels = []
    for kind, volume in (("magnitude", magnitude), ("phase", hp_phase)):
        if volume is None:
            continue
        for extent, points in zip(extents, voxels):
            seen = _antialiased(volume, affine, extent / PATCH_SIZE) if extent > PATCH_MM else volume
            values = _sample_voxels(seen, points).reshape(shape)
            if kind == "magnitude":
                channels.append(np.clip(values / reference, 0.0, _MAGNITUDE_CLIP))
            else:
                channels.append(np.clip(paramagnetic_sign * values, -np.pi, np.pi) / np.pi)
    return np.stack(channels, axis=1).astype(np.float32)


def _antialiased(volume: npt.NDArray[np.floating], affine: npt.NDArray[np.float64],
                 spacing_mm: float) -> npt.NDArray[np.float32]:
    """``volume`` smoothed so that sampling it every ``spacing_mm`` does not alias: a Gaussian of
    that FWHM, less the width a voxel already averages over (thick slices get little or none)."""
    fwhm_to_sigma = 1.0 / np.sqrt(8.0 * np.log(2.0))
    voxel = voxel_sizes(affine)
    sigma = np.sqrt(np.clip(spacing_mm**2 - voxel**2, 0.0, None)) * fwhm_to_sigma / voxel
    return ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), sigma, mode="nearest", truncate=3.0)


#: A candidate's mirror partner lies within this distance (MNI mm) of its image across the midline
#: (registration and asymmetry of paired structures are a few millimetres).
MIRROR_RADIUS_MM = 4.0
#: The contrast-ratio image is smoothed by a Gaussian of this sigma (mm) before the mirror is read
#: (:func:`add_mirror_measures`; chosen on validation, benchmarks/RESULTS.md).
MIRROR_SMOOTH_MM = 0.5


def mirror_contrast(mni_xyz: npt.ArrayLike, contrast: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The contrast of the strongest other candidate near each candidate's mirror image across the
    MNI midline, relative to its own (0 when there is none).

    A reader dismisses a dark spot whose twin sits at the same place in the other hemisphere (iron
    nuclei, paired veins); microbleeds are rarely mirrored.
    """
    mni = np.asarray(mni_xyz, dtype=float).reshape(-1, 3)
    contrast = np.asarray(contrast, dtype=float)
    ratio = np.zeros(len(mni))
    if not len(mni):
        return ratio
    tree = cKDTree(mni)
    for i, near in enumerate(tree.query_ball_point(mni * (-1.0, 1.0, 1.0), MIRROR_RADIUS_MM)):
        others = [j for j in near if j != i]
        if others:
            ratio[i] = contrast[others].max() / max(contrast[i], 1e-6)
    return ratio


def mirror_darkness(ratio: npt.NDArray[np.floating], affine: npt.NDArray[np.float64], xyz: npt.ArrayLike,
                    mirror_xyz: npt.ArrayLike, own_radius_mm: npt.ArrayLike,
                    contrast: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """How dark the image itself is at each candidate's mirror image, relative to the candidate.

    ``ratio`` is the contrast-ratio image (:func:`cmbflow.candidates.contrast_ratio`) and
    ``mirror_xyz`` the mirrored MNI position of each candidate mapped back into the scan (world
    mm). The darkest ratio within :data:`MIRROR_RADIUS_MM` of it, as a contrast (1 - ratio) over
    the candidate's own; voxels within the candidate's own radius (plus a voxel) of ``xyz`` are
    left out, so that one near the midline does not see itself. Unlike :func:`mirror_contrast` it
    needs no candidate at the mirror: a nucleus is dark there even where stage 1 kept no seed.
    """
    ratio = np.asarray(ratio, dtype=np.float32)
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    out = np.zeros(len(xyz))
    if not len(xyz):
        return out
    sizes = voxel_sizes(affine)
    reach = np.ceil(MIRROR_RADIUS_MM / sizes).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), axis=-1).reshape(-1, 3)
    ball = grid[np.linalg.norm(grid @ affine[:3, :3].T, axis=1) <= MIRROR_RADIUS_MM]
    centres = np.rint(xyz_to_ijk(affine, np.asarray(mirror_xyz, dtype=float).reshape(-1, 3))).astype(int)
    own = np.asarray(own_radius_mm, dtype=float) + sizes.max()
    shape = np.array(ratio.shape)
    for n, centre in enumerate(centres):
        voxels = centre + ball
        voxels = voxels[np.all((voxels >= 0) & (voxels < shape), axis=1)]
        voxels = voxels[np.linalg.norm(ijk_to_xyz(affine, voxels) - xyz[n], axis=1) > own[n]]
        if len(voxels):
            out[n] = max(0.0, 1.0 - float(ratio[tuple(voxels.T)].min()))
    return out / np.maximum(np.asarray(contrast, dtype=float), 1e-6)


def add_mirror_measures(table: pd.DataFrame, data: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_],
                        affine: npt.NDArray[np.float64], transforms: Transforms, params: CandidateParams) -> None:
    """Give a candidates table (with ``mni_x mni_y mni_z``) its ``mirror_contrast`` (a classifier
    input) and ``mirror_darkness`` (the mirror veto's measure) from the magnitude ``data``."""
    from cmbflow.candidates import contrast_ratio  # loads torch (FRST): not for the QC pages' protocol ranges

    mni = table[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
    table["mirror_contrast"] = mirror_contrast(mni, table["contrast"])
    if not mask.any():
        table["mirror_darkness"] = 0.0
        return
    # The brain's bounding box holds every voxel darker than 1, at a fraction of the cost.
    box = mask_box(mask)
    sizes = voxel_sizes(affine)
    ratio = contrast_ratio(np.asarray(data, dtype=np.float32)[box], mask[box], sizes, params)
    # Smoothed, so that a nucleus stays dark and the darkest voxel of noise does not.
    ratio = ndimage.gaussian_filter(ratio, MIRROR_SMOOTH_MM / sizes, mode="nearest")
    box_affine = affine @ nib.affines.from_matvec(np.eye(3), [s.start for s in box])
    table["mirror_darkness"] = mirror_darkness(ratio, box_affine, table[["x", "y", "z"]], points_from_mni(
        mni * (-1.0, 1.0, 1.0), transforms), table["radius_mm"], table["contrast"])


#: Stage-1 measurements the classifier sees, each mapped to a range near [-3, 3].
_FEATURE_TRANSFORMS = {
    "radius_mm": lambda v: np.log(np.clip(v, 1e-6, None)),
    "volume_mm3": lambda v: np.log(np.clip(v, 1e-6, None)),
    "frst": lambda v: np.log(np.clip(v, 1e-4, None)),
    "contrast": lambda v: np.clip(v, 1e-6, None),
    "roundness": lambda v: np.clip(v, 1e-6, None),
    "elongation": lambda v: np.log(np.clip(v, 1e-6, None)),
    "edge_distance_mm": lambda v: np.log1p(np.clip(v, 1e-6, None)),
    "mirror_contrast": lambda v: np.clip(v, 0.0, 2.0),
    "phase_dipole": lambda v: np.clip(v, -np.pi, np.pi),
}


def n_features(with_phase: bool) -> int:
    """How many features :func:`candidate_features` gives."""
    return len(_FEATURE_TRANSFORMS) - (0 if with_phase else 1)


def candidate_features(table: pd.DataFrame, with_phase: bool) -> npt.NDArray[np.float32]:
    """The stage-1 features (n, F) of each candidate; ``phase_dipole`` (last) only ``with_phase``."""
    names = [name for name in _FEATURE_TRANSFORMS if with_phase or name != "phase_dipole"]
    columns = [_FEATURE_TRANSFORMS[name](table[name].to_numpy(dtype=np.float64)) for name in names]
    return np.nan_to_num(np.stack(columns, axis=1), nan=0.0).astype(np.float32)
