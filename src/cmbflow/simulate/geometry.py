"""Where the head sits in the scanner and the acquisition grid that images it.

World = scanner RAS+ mm with B0 along +z. The subject's head is the MNI152 head rotated, scaled
and shifted about the scanner isocentre; the acquisition grid has the voxel size and axis codes of
the subject's parameters (optionally tilted), and a field of view that covers the whole head.
A head may also differ from the template by a smooth non-linear :class:`Warp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cmbflow.simulate.params import SubjectParams

#: MNI position (mm) that is put at the scanner isocentre: the middle of the brain's bounding box.
MNI_HEAD_CENTRE = np.array([0.0, -17.0, 5.0])
_WORLD_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def rotation_xyz(degrees: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """Rotation about world x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def world_from_mni(params: SubjectParams) -> npt.NDArray[np.float64]:
    """4x4 map from MNI mm to scanner world mm (rotation and scale about the head centre, then shift)."""
    linear = params.head_scale * rotation_xyz(params.head_rotation_deg)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = np.asarray(params.head_shift_mm, dtype=float) - linear @ MNI_HEAD_CENTRE
    return out


def axis_directions(params: SubjectParams) -> npt.NDArray[np.float64]:
    """Orthonormal world directions (columns) of the three array axes: axis codes, then tilt."""
    directions = np.zeros((3, 3))
    for axis, code in enumerate(params.orientation):
        world_axis, sign = _WORLD_AXIS[code]
        directions[world_axis, axis] = sign
    return rotation_xyz(params.oblique_deg) @ directions


def acquisition_grid(
    params: SubjectParams,
    head_points_world: npt.NDArray[np.float64],
    multiple_of: tuple[int, int, int] = (1, 1, 1),
    margin_mm: float = 6.0,
) -> tuple[npt.NDArray[np.float64], tuple[int, int, int]]:
    """Affine and shape of a grid whose field of view covers ``head_points_world`` (N, 3).

    Each axis length is a multiple of ``multiple_of`` (so that blocks of voxels tile the grid).
    """
    directions = axis_directions(params)
    vs = np.asarray(params.voxel_size_mm, dtype=float)
    along = head_points_world @ directions  # position along each array axis, mm
    lo, hi = along.min(axis=0) - margin_mm, along.max(axis=0) + margin_mm
    m = np.asarray(multiple_of)
    shape = (np.ceil((hi - lo) / vs / m) * m).astype(int)
    first = (lo + hi) / 2 - (shape - 1) / 2 * vs  # centre the field of view on the head
    affine = np.eye(4)
    affine[:3, :3] = directions * vs
    affine[:3, 3] = directions @ first
    return affine, tuple(int(s) for s in shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Warp:
    """A smooth random non-linear warp of the template: the head's anatomy at MNI position q is
    the template's at ``q + displacement(q)``. A few long plane waves, so it is smooth, and gentle
    enough to be invertible (its gradient is at most 2 pi max_mm / 80 mm: 0.39 at 5 mm)."""

    wavevectors: npt.NDArray[np.float64]  # (K, 3) cycles per mm
    phases: npt.NDArray[np.float64]  # (K,) radians
    amplitudes: npt.NDArray[np.float64]  # (K, 3) mm

    def displacement(self, q: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Displacement (mm) at MNI positions (N, 3); float32 in, float32 out."""
        dtype = np.float32 if q.dtype == np.float32 else np.float64
        out = np.zeros(q.shape, dtype)
        for k, phase, amplitude in zip(self.wavevectors, self.phases, self.amplitudes):
            wave = np.sin(q @ (2 * np.pi * k).astype(dtype) + dtype(phase))
            out += wave[:, None] * amplitude.astype(dtype)
        return out

    def head_position(self, template_mni: npt.NDArray[np.float64], iterations: int = 12) -> npt.NDArray[np.float64]:
        """Where template positions (N, 3) lie in the warped head: q with q + u(q) = p (fixed point)."""
        p = np.asarray(template_mni, dtype=float)
        q = p.copy()
        for _ in range(iterations):  # the error shrinks by the gradient's bound each step
            q = p - self.displacement(q)
        return q


def draw_warp(rng: np.random.Generator, max_mm: float, modes: int = 4) -> Warp:
    """Plane waves of 80-160 mm wavelength in random directions, amplitudes adding up to at most ``max_mm``."""
    directions = rng.standard_normal((modes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavevectors = directions / rng.uniform(80.0, 160.0, (modes, 1))
    polarisations = rng.standard_normal((modes, 3))
    polarisations /= np.linalg.norm(polarisations, axis=1, keepdims=True)
    amplitudes = polarisations * (max_mm / modes) * rng.uniform(0.5, 1.0, (modes, 1))
    return Warp(wavevectors, rng.uniform(0, 2 * np.pi, modes), amplitudes)
