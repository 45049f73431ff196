"""Iron-rich deep nuclei: the bilateral dark structures a reader knows are not microbleeds.

Each nucleus is a soft ellipsoid (the dentate a folded ribbon: an ellipsoidal shell) at its MNI
position, drawn per head with its own susceptibility, size, small shift and texture; left and right
differ a little. The resulting iron map (ppm relative to tissue) adds to the head's susceptibility
and, through R2*, darkens the magnitude, as iron does. Positions and sizes are approximate MNI152
2009 anatomy; susceptibilities are the ranges of 3 T QSM studies of adults, widened for age.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Nucleus:
    """A nucleus of the right hemisphere (the left one mirrors x and the yaw)."""

    name: str
    centre_mm: tuple[float, float, float]  # MNI
    semi_axes_mm: tuple[float, float, float]  # along x, y, z before the yaw
    yaw_deg: float  # rotation about z; positive turns the anterior end towards the midline
    chi_ppm: tuple[float, float]  # range drawn from
    hollow: bool = False


IRON_NUCLEI = (
    Nucleus("globus_pallidus", (19.0, -4.0, 0.0), (4.0, 9.0, 5.0), 25.0, (0.08, 0.25)),
    Nucleus("putamen", (25.0, 2.0, 2.0), (5.0, 13.0, 8.0), 15.0, (0.02, 0.10)),
    Nucleus("caudate", (13.0, 12.0, 10.0), (4.0, 8.0, 7.0), 0.0, (0.02, 0.10)),
    Nucleus("pulvinar", (15.0, -27.0, 5.0), (5.0, 6.0, 4.5), 0.0, (0.02, 0.08)),
    Nucleus("red_nucleus", (5.0, -20.0, -9.0), (3.0, 3.5, 3.5), 0.0, (0.06, 0.22)),
    Nucleus("substantia_nigra", (11.0, -17.0, -12.0), (2.5, 6.0, 2.5), 35.0, (0.08, 0.25)),
    Nucleus("dentate", (14.0, -57.0, -35.0), (7.0, 8.0, 5.0), 20.0, (0.05, 0.18), hollow=True),
)
#: The dentate's ribbon: the inner (hollow) ellipsoid's size relative to the outer one.
_SHELL_INNER = 0.55


@dataclass(frozen=True)
class IronNucleus:
    """One side of one nucleus in one head."""

    name: str
    side: str  # "L" or "R"
    centre_mni: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    yaw_deg: float
    chi_ppm: float
    hollow: bool
    texture: float  # relative amplitude of its patchy iron
    texture_seed: int


def draw_nuclei(rng: np.random.Generator) -> list[IronNucleus]:
    """Both sides of every nucleus, with one age-like iron factor for the head."""
    head_iron = float(rng.uniform(0.6, 1.5))
    texture = float(rng.uniform(0.0, 0.4))
    drawn = []
    for nucleus in IRON_NUCLEI:
        chi = float(rng.uniform(*nucleus.chi_ppm)) * head_iron
        size = float(rng.uniform(0.85, 1.2))
        for side, mirror in (("R", 1.0), ("L", -1.0)):
            shift = rng.uniform(-1.5, 1.5, 3)
            centre = np.asarray(nucleus.centre_mm) * (mirror, 1.0, 1.0) + shift
            axes = np.asarray(nucleus.semi_axes_mm) * size * rng.uniform(0.92, 1.08)
            drawn.append(IronNucleus(
                nucleus.name, side, tuple(np.round(centre, 3).tolist()), tuple(np.round(axes, 3).tolist()),
                mirror * nucleus.yaw_deg, round(chi * float(rng.uniform(0.9, 1.1)), 4), nucleus.hollow,
                round(texture, 3), int(rng.integers(2**31)),
            ))
    return drawn


def _occupancy(radius: npt.NDArray[np.float64], edge_mm: float) -> npt.NDArray[np.float64]:
    """Soft inside-ness of a normalised ellipsoid radius (1 at the surface), ramp ``edge_mm`` wide."""
    return np.clip((1.0 - radius) / edge_mm + 0.5, 0.0, 1.0)


def iron_map(
    origin_mm: npt.NDArray[np.float64], resolution_mm: float, shape: tuple[int, int, int],
    nuclei: list[IronNucleus],
) -> npt.NDArray[np.float32]:
    """Iron susceptibility (ppm) on an axis-aligned MNI grid (voxel (0,0,0) at ``origin_mm``)."""
    chi = np.zeros(shape, np.float32)
    for nucleus in nuclei:
        centre, axes = np.asarray(nucleus.centre_mni), np.asarray(nucleus.semi_axes_mm)
        reach = axes.max() + 2 * resolution_mm
        lo = np.maximum(np.floor((centre - reach - origin_mm) / resolution_mm).astype(int), 0)
        hi = np.minimum(np.ceil((centre + reach - origin_mm) / resolution_mm).astype(int) + 1, shape)
        grids = np.meshgrid(*[origin_mm[a] + resolution_mm * np.arange(lo[a], hi[a]) - centre[a] for a in range(3)],
                            indexing="ij")
        yaw = np.deg2rad(nucleus.yaw_deg)
        # Into the nucleus's own axes: undo the yaw about z.
        u = np.cos(yaw) * grids[0] + np.sin(yaw) * grids[1]
        v = -np.sin(yaw) * grids[0] + np.cos(yaw) * grids[1]
        w = grids[2]
        radius = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (w / axes[2]) ** 2)
        edge = resolution_mm / float(axes.min())  # about one voxel of soft edge
        inside = _occupancy(radius, edge)
        if nucleus.hollow:
            inside = inside - _occupancy(radius / _SHELL_INNER, edge / _SHELL_INNER)
        if nucleus.texture > 0:
            noise = np.random.default_rng(nucleus.texture_seed).standard_normal(inside.shape)
            noise = ndi.gaussian_filter(noise, 1.5 / resolution_mm)
            noise /= max(float(noise.std()), 1e-6)
            inside = inside * np.clip(1.0 + nucleus.texture * noise, 0.0, None)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        chi[box] += (nucleus.chi_ppm * inside).astype(np.float32)
    return chi
