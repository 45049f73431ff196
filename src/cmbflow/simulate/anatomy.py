"""Simulated anatomy in MNI152 space: tissue maps, lesion regions, lesion and vein placement.

The brain comes from nilearn's bundled MNI152 2009 grey-matter, white-matter and brain-mask maps
(offline). Everything outside the brain mask (CSF rim, skull, scalp) is built later from the signed
distance to the brain surface stored here. Lesions and veins are placed in MNI millimetres, so their
region labels come straight from MNI positions; distances that must hold in the subject (sizes,
spacing) are converted with the subject's head scale.

Region rules (MNI mm, heuristic boxes; MARS categories):
- infratentorial: cerebellum ``y < -40 and z < -20`` or brainstem ``|x| < 14, -42 < y < -12, z < -12``
  (the upper midbrain falls into "deep");
- deep: ``|x| < 32, -38 < y < 28, -12 < z < 24`` (basal ganglia, thalamus, internal capsule);
- lobar: everything else.
Deep grey matter (the iron-rich nuclei) is the grey-matter probability inside the deep box.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from cmbflow.simulate.params import SubjectParams

#: MNI mm box of the deep region (basal ganglia, thalamus, internal capsule).
DEEP_BOX_MM = ((-32.0, 32.0), (-38.0, 28.0), (-12.0, 24.0))
#: The MNI152 brain mask reaches the bottom of the template (brainstem); pad below for the head.
_PAD_BELOW_MM = 24
#: Surface gap between lesions (mm), so that each is a separate finding even after blooming.
LESION_GAP_MM = 8.0
#: Margin (mm) kept between a vein's wall and a lesion's surface.
VEIN_LESION_GAP_MM = 3.0

CMB_REGION_WEIGHTS = {"lobar": 0.6, "deep": 0.25, "infratentorial": 0.15}
CALCIFICATION_SITE_WEIGHTS = {"deep": 0.6, "periventricular": 0.4}


def _region_masks(x, y, z):
    """Boolean (infratentorial, deep) masks of MNI coordinates (arrays that broadcast)."""
    infra = ((y < -40) & (z < -20)) | ((np.abs(x) < 14) & (y > -42) & (y < -12) & (z < -12))
    (x0, x1), (y0, y1), (z0, z1) = DEEP_BOX_MM
    deep = (x > x0) & (x < x1) & (y > y0) & (y < y1) & (z > z0) & (z < z1) & ~infra
    return infra, deep


def lesion_region(mni: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """MARS region (``lobar``, ``deep``, ``infratentorial``) of MNI positions (N, 3) in mm."""
    infra, deep = _region_masks(*np.atleast_2d(np.asarray(mni, dtype=float)).T)
    return np.where(infra, "infratentorial", np.where(deep, "deep", "lobar"))


@dataclass(frozen=True, eq=False)
class MniCanvas:
    """MNI152 tissue maps on a padded 1 or 2 mm grid (axis-aligned, RAS), plus placement sites."""

    resolution_mm: float
    origin_mm: npt.NDArray[np.float64]  # MNI position of voxel (0, 0, 0)
    gm: npt.NDArray[np.float32]
    wm: npt.NDArray[np.float32]
    brain: npt.NDArray[np.float32]  # brain-mask fraction (brain tissue + internal CSF)
    deep_gm: npt.NDArray[np.float32]  # grey matter inside the deep box
    sdist: npt.NDArray[np.float32]  # signed distance to the brain surface (mm, + outside)
    tissue_depth: npt.NDArray[np.float32]  # distance to the nearest non-tissue (CSF, outside)
    sites: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)  # (N, 3) MNI mm
    head_points: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # MNI xyz, sdist

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Canvas voxel -> MNI mm."""
        aff = np.eye(4) * self.resolution_mm
        aff[3, 3] = 1.0
        aff[:3, 3] = self.origin_mm
        return aff

    def sample(self, volume: npt.NDArray[np.float32], mni: npt.ArrayLike, cval: float = 0.0) -> npt.NDArray[np.float64]:
        """Trilinear value of a canvas volume at MNI positions (N, 3)."""
        ijk = (np.atleast_2d(np.asarray(mni, dtype=float)) - self.origin_mm) / self.resolution_mm
        return ndi.map_coordinates(volume, ijk.T, order=1, mode="constant", cval=cval)

    def surface_normal(self, mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Unit outward normal of the brain surface (gradient of the signed distance) at (N, 3)."""
        pts = np.atleast_2d(np.asarray(mni, dtype=float))
        h = self.resolution_mm
        offsets = np.concatenate([np.eye(3) * h, -np.eye(3) * h])
        values = self.sample(self.sdist, (pts[:, None, :] + offsets[None]).reshape(-1, 3), cval=100.0)
        values = values.reshape(len(pts), 6)
        grad = values[:, :3] - values[:, 3:]
        return grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-9)


def _box_weight(
    coords: list[npt.NDArray[np.float64]], box: tuple[tuple[float, float], ...], ramp_mm: float
) -> npt.NDArray[np.float32]:
    """Soft indicator of an MNI box (linear ramps of ``ramp_mm``), broadcast over the canvas axes."""
    weight = np.ones((1, 1, 1), np.float32)
    for c, (lo, hi) in zip(coords, box):
        w = np.clip((c - lo) / ramp_mm + 0.5, 0, 1) * np.clip((hi - c) / ramp_mm + 0.5, 0, 1)
        weight = weight * w.astype(np.float32)
    return weight


def _block_mean(volume: npt.NDArray[np.floating], factor: int) -> npt.NDArray[np.float32]:
    pad = [(0, (-s) % factor) for s in volume.shape]
    v = np.pad(volume, pad, mode="edge")
    shape = [s // factor for s in v.shape]
    return v.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5)).astype(np.float32)


@lru_cache(maxsize=2)
def mni_canvas(resolution_mm: int = 1) -> MniCanvas:
    """The MNI152 tissue maps and placement sites (cached: built once per process; ~8 s, 0.9 GB at 1 mm)."""
    from nilearn import datasets  # imported here: nilearn's import is slow and only the simulator needs it

    images = [f(resolution=1) for f in (
        datasets.load_mni152_gm_template, datasets.load_mni152_wm_template, datasets.load_mni152_brain_mask)]
    origin = images[0].affine[:3, 3].astype(float) - np.array([0.0, 0.0, _PAD_BELOW_MM])
    pad = ((0, 0), (0, 0), (_PAD_BELOW_MM, 0))
    gm, wm, brain = (np.pad(np.asarray(img.dataobj, dtype=np.float32), pad) for img in images)
    if resolution_mm == 2:
        gm, wm, brain = (_block_mean(v, 2) for v in (gm, wm, brain))
        origin = origin + 0.5  # centre of the first 2x2x2 block
    res = float(resolution_mm)
    coords = [origin[a] + res * np.arange(n).reshape([-1 if b == a else 1 for b in range(3)])
              for a, n in enumerate(gm.shape)]  # MNI mm along each axis, broadcastable

    inside = brain >= 0.5
    gm = np.where(inside, gm, 0).astype(np.float32)
    wm = np.where(inside, wm, 0).astype(np.float32)
    outside_d = ndi.distance_transform_edt(~inside, sampling=res).astype(np.float32)
    inside_d = ndi.distance_transform_edt(inside, sampling=res).astype(np.float32)
    # Voxel centres next to the surface are half a voxel from it.
    sdist = np.where(inside, -(inside_d - 0.5 * res), outside_d - 0.5 * res).astype(np.float32)
    del outside_d, inside_d
    tissue = inside & (gm + wm >= 0.9)
    tissue_depth = ndi.distance_transform_edt(tissue, sampling=res).astype(np.float32)
    deep_gm = (gm * _box_weight(coords, DEEP_BOX_MM, 2.0)).astype(np.float32)

    canvas = MniCanvas(res, origin, gm, wm, brain, deep_gm, sdist, tissue_depth)
    step = max(1, int(round(4 / res)))  # a sparse cloud is enough to size the field of view
    pts = np.argwhere(sdist[::step, ::step, ::step] <= 25.0) * step
    head_points = np.column_stack([origin + res * pts, sdist[tuple(pts.T)]]).astype(np.float32)
    return replace(canvas, sites=_placement_sites(canvas, coords, tissue), head_points=head_points)


def _placement_sites(
    canvas: MniCanvas, coords: list, tissue: npt.NDArray[np.bool_]
) -> dict[str, npt.NDArray[np.float32]]:
    """MNI positions (voxel centres) where each kind of lesion or vein may start."""
    gm, wm, sdist = canvas.gm, canvas.wm, canvas.sdist
    xyz = np.broadcast_arrays(*coords)

    def positions(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        return np.column_stack([c[mask] for c in xyz]).astype(np.float32)

    nonzero = canvas.brain >= 0.5
    x, y, z = coords
    infra, deep = _region_masks(x, y, z)
    lobar = ~infra & ~deep
    supratentorial_core = (z > -8) | (y > -30)  # keeps lobar lesions clear of the tentorium rule
    infra_core = ((y < -45) & (z < -26)) | ((np.abs(x) < 10) & (y > -38) & (y < -16) & (z < -18))
    csf = nonzero & (gm + wm < 0.4)
    ventricle = csf & (sdist < -12)  # internal CSF far from the surface: ventricles, not sulci
    trigone = (np.abs(x) > 15) & (np.abs(x) < 36) & (y > -50) & (y < -20) & (z > 0) & (z < 28)
    # Distance to the ventricles is only needed around the trigones: compute it in that box alone.
    extent = np.argwhere(np.broadcast_to(trigone, gm.shape))
    box = tuple(slice(max(lo - 8, 0), hi + 9) for lo, hi in zip(extent.min(axis=0), extent.max(axis=0)))
    near_ventricle = np.zeros(gm.shape, bool)
    near_ventricle[box] = ndi.distance_transform_edt(~ventricle[box], sampling=canvas.resolution_mm) <= 4.0
    return {
        "lobar": positions(tissue & lobar & (gm >= 0.25) & (gm <= 0.85) & supratentorial_core),
        "deep": positions(tissue & deep & (canvas.deep_gm >= 0.45)),
        "infratentorial": positions(tissue & infra & infra_core),
        "periventricular": positions(tissue & near_ventricle & trigone),
        "cortical_vein": positions(nonzero & (sdist > -2.0) & (sdist < -0.5) & (gm >= 0.3) & (z > -10)),
        "medullary_vein": positions((wm >= 0.9) & (sdist < -14) & lobar & (z > 0)),
    }


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion: position in MNI mm, true size and susceptibility relative to tissue."""

    kind: str  # "cmb" or "calcification"
    mni: tuple[float, float, float]
    diameter_mm: float
    chi_ppm: float
    region: str
    hemisphere: str


@dataclass(frozen=True)
class Vein:
    """A tubular vein: centre line in MNI mm, true diameter and susceptibility relative to tissue."""

    kind: str  # "cortical", "medullary", "deep_vein" or "artery" (a flow void: no susceptibility)
    points_mni: npt.NDArray[np.float64]  # (N, 3), 0.5 mm steps
    diameter_mm: float
    chi_ppm: float


def _draw_site(canvas: MniCanvas, site: str, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    candidates = canvas.sites[site]
    jitter = rng.uniform(-0.5, 0.5, 3) * canvas.resolution_mm
    return candidates[int(rng.integers(len(candidates)))].astype(float) + jitter


def _draw_lesion(
    canvas: MniCanvas,
    kind: str,
    site: str,
    diameter: float,
    chi: float,
    placed: list[Lesion],
    scale: float,
    rng: np.random.Generator,
    tries: int = 300,
    atrophy_mm: float = 0.0,
) -> Lesion | None:
    """Rejection-sample a position inside tissue (also once atrophy has taken up to twice
    ``atrophy_mm`` from it) and far enough from the lesions placed so far."""
    for _ in range(tries):
        mni = _draw_site(canvas, site, rng)
        if scale * (float(canvas.sample(canvas.tissue_depth, mni)[0]) - 2 * atrophy_mm) < diameter / 2 + 0.5:
            continue
        if any(
            scale * np.linalg.norm(mni - np.asarray(other.mni)) < LESION_GAP_MM + (diameter + other.diameter_mm) / 2
            for other in placed
        ):
            continue
        region = str(lesion_region(mni)[0])
        position = (float(mni[0]), float(mni[1]), float(mni[2]))
        return Lesion(kind, position, diameter, chi, region, "L" if mni[0] < 0 else "R")
    return None


def place_lesions(
    canvas: MniCanvas, params: SubjectParams, rng: np.random.Generator, existing: Sequence[Lesion] = ()
) -> list[Lesion]:
    """Microbleeds then calcifications, inside tissue, not touching, >= 8 mm apart (surface gap),
    also from the ``existing`` lesions (a follow-up session's new bleeds); only the new ones are returned.

    Fewer than asked are returned only when no free position is found (recorded as realised).
    """
    placed: list[Lesion] = list(existing)
    kinds = (
        ("cmb", params.n_cmb, CMB_REGION_WEIGHTS, params.cmb_diameter_mm, params.cmb_chi_ppm),
        ("calcification", params.n_calcifications, CALCIFICATION_SITE_WEIGHTS,
         params.calcification_diameter_mm, params.calcification_chi_ppm),
    )
    for kind, count, site_weights, diameter_range, chi_range in kinds:
        sites = list(site_weights)
        weights = np.array(list(site_weights.values()))
        for _ in range(count):
            site = sites[int(rng.choice(len(sites), p=weights))]
            diameter = round(float(rng.uniform(*diameter_range)), 3)
            chi = round(float(rng.uniform(*chi_range)), 4)
            lesion = _draw_lesion(canvas, kind, site, diameter, chi, placed, params.head_scale, rng,
                                  atrophy_mm=params.atrophy_mm)
            if lesion is not None:
                placed.append(lesion)
    return placed[len(existing):]


def _trace_cortical(
    canvas: MniCanvas, start: npt.NDArray[np.float64], direction: npt.NDArray[np.float64], length: float,
    rng: np.random.Generator, step: float = 0.5,
) -> npt.NDArray[np.float64]:
    """Follow the brain surface at the start's depth, heading along ``direction`` projected on it."""
    depth = float(canvas.sample(canvas.sdist, start, cval=100.0)[0])
    points, p, d = [start], start.copy(), direction
    for _ in range(int(length / step)):
        normal = canvas.surface_normal(p)[0]
        tangent = d - (d @ normal) * normal
        if np.linalg.norm(tangent) < 0.3:  # the surface turned across the vein's course
            break
        tangent = tangent / np.linalg.norm(tangent) + 0.03 * rng.standard_normal(3)  # gentle bends
        d = tangent / np.linalg.norm(tangent)
        p = p + step * d
        p = p - (float(canvas.sample(canvas.sdist, p, cval=100.0)[0]) - depth) * normal
        if not -4.0 < float(canvas.sample(canvas.sdist, p, cval=100.0)[0]) < 0.0:
            break
        points.append(p)
    return np.asarray(points)


def _trace_medullary(
    canvas: MniCanvas, start: npt.NDArray[np.float64], length: float, rng: np.random.Generator, step: float = 0.5,
) -> npt.NDArray[np.float64]:
    """Run from deep white matter towards the cortex along the distance gradient (radially)."""
    points, p = [start], start.copy()
    d = canvas.surface_normal(p)[0]
    for _ in range(int(length / step)):
        target = canvas.surface_normal(p)[0]
        d = 0.85 * d + 0.15 * target + 0.03 * rng.standard_normal(3)
        d = d / np.linalg.norm(d)
        p = p + step * d
        if float(canvas.sample(canvas.sdist, p, cval=100.0)[0]) > -3.0:
            break
        if float(canvas.sample(canvas.gm, p)[0] + canvas.sample(canvas.wm, p)[0]) < 0.6:  # entered CSF
            break
        points.append(p)
    return np.asarray(points)


def _min_distance(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def place_veins(
    canvas: MniCanvas,
    params: SubjectParams,
    lesions: list[Lesion],
    world_from_mni: npt.NDArray[np.float64],
    rng: np.random.Generator,
    tries: int = 60,
) -> list[Vein]:
    """Cortical veins along the surface and medullary veins running radially through white matter.

    A third are started heading along B0 (world z), a third across it and a third at any angle,
    so that both extreme field patterns and everything between occur. Veins keep clear of lesions
    and of each other.
    """
    rotation = world_from_mni[:3, :3] / params.head_scale
    scale = params.head_scale
    veins: list[Vein] = []
    for _ in range(params.n_veins):
        kind = "cortical" if rng.random() < 0.6 else "medullary"
        start = rng.choice(3)
        if start == 0:
            world_dir = np.array([0.0, 0.0, 1.0])
        elif start == 1:
            angle = rng.uniform(0, 2 * np.pi)
            world_dir = np.array([np.cos(angle), np.sin(angle), 0.0])
        else:
            world_dir = rng.standard_normal(3)
            world_dir /= np.linalg.norm(world_dir)
        direction = rotation.T @ world_dir  # the same direction in MNI space
        diameters = params.cortical_vein_diameter_mm if kind == "cortical" else params.medullary_vein_diameter_mm
        diameter = round(float(rng.uniform(*diameters)), 3)
        chi = round(float(rng.uniform(*params.vein_chi_ppm)), 4)
        length = float(rng.uniform(30, 55) if kind == "cortical" else rng.uniform(15, 30))
        for _ in range(tries):
            start = _draw_site(canvas, f"{kind}_vein", rng)
            normal = canvas.surface_normal(start)[0]
            if kind == "cortical":
                if abs(normal @ direction) > 0.3:
                    continue
                points = _trace_cortical(canvas, start, direction, length, rng)
            else:
                if abs(normal @ direction) < 0.8:
                    continue
                points = _trace_medullary(canvas, start, length, rng)
            if len(points) < int(0.6 * length / 0.5):
                continue
            if vessel_is_clear(points, diameter, lesions, veins, scale):
                veins.append(Vein(kind, points, diameter, chi))
                break
    return veins


def vessel_is_clear(
    points: npt.NDArray[np.float64], diameter: float, lesions: Sequence[Lesion], vessels: Sequence[Vein], scale: float,
) -> bool:
    """Whether a vessel (centre line in MNI mm) keeps its margins from every lesion and vessel."""
    return all(
        scale * _min_distance(points, np.asarray([lesion.mni]))
        >= lesion.diameter_mm / 2 + diameter / 2 + VEIN_LESION_GAP_MM
        for lesion in lesions
    ) and all(
        scale * _min_distance(points, other.points_mni) >= (diameter + other.diameter_mm) / 2 + 1.0
        for other in vessels
    )
