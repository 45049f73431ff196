"""Where the head sits in the scanner and the acquisition grid that images it.

World = scanner RAS+ mm with B0 along +z. The subject's head is the MNI152 head rotated, scaled
and shifted about the scanner isocentre; the acquisition grid has the voxel size and axis codes of
the subject's parameters (optionally tilted), and a field of view that covers the whole head.
"""

from __future__ import annotations

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
