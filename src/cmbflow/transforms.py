"""The subject <-> MNI transforms that registration wrote, and points moved through them.

ANTs works in LPS physical space while NIfTI affines (and cmbflow) use RAS+; points cross between
the two here, images in :mod:`cmbflow.anat`. The affine (an ITK ``.mat`` file) is read and applied
with numpy, so placing detections in MNI space (rule locate) loads no ANTs; only a SyN warp does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import io as sio

from cmbflow.errors import InputError

#: RAS+ <-> LPS sign flip of world coordinates (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Registration QC (:func:`cmbflow.anat.alignment_ratio`): the near miss a fit is compared with,
#: and the ratio below which a template registration is tried again from the whole head and the QC
#: pages warn (failed registrations measured 1.1-1.6, good ones 2.1-5.8; benchmarks/RESULTS.md).
ALIGNMENT_SHIFT_MM = 6.0
MIN_ALIGNMENT = 2.0


@dataclass(frozen=True)
class Transforms:
    """ANTs transform files between a subject image and MNI space, as written by ANTs.

    ``affine`` maps MNI points to subject points (ANTs stores the fixed->moving direction, which
    pulls subject images into MNI space); ``warp``/``inverse_warp`` exist only after SyN.
    """

    affine: Path
    warp: Path | None = None
    inverse_warp: Path | None = None

    @classmethod
    def at(cls, prefix: str | Path) -> Transforms:
        """The transforms that :func:`cmbflow.anat.register_to_mni` wrote with this prefix."""
        paths = transform_paths(prefix)
        if not paths["affine"].exists():
            raise InputError("registration transform not found", path=paths["affine"])
        warps = [paths[k] if paths[k].exists() else None for k in ("warp", "inverse_warp")]
        return cls(paths["affine"], *warps)

    def subject_to_mni(self) -> tuple[list[str], list[bool]]:
        """Transform list and inversion flags that pull a subject image into MNI space
        (equivalently: push MNI points to the subject)."""
        files = ([str(self.warp)] if self.warp else []) + [str(self.affine)]
        return files, [False] * len(files)

    def mni_to_subject(self) -> tuple[list[str], list[bool]]:
        """Transform list and inversion flags that pull an MNI image onto the subject grid
        (equivalently: push subject points to MNI)."""
        files = [str(self.affine)] + ([str(self.inverse_warp)] if self.inverse_warp else [])
        return files, [True] + [False] * (len(files) - 1)


def transform_paths(prefix: str | Path) -> dict[str, Path]:
    """The files of the transforms registered with this prefix (the warps only after SyN)."""
    prefix = str(prefix)
    return {
        "affine": Path(f"{prefix}affine.mat"),
        "warp": Path(f"{prefix}warp.nii.gz"),
        "inverse_warp": Path(f"{prefix}inverse-warp.nii.gz"),
    }


def points_to_mni(xyz: npt.ArrayLike, transforms: Transforms) -> npt.NDArray[np.float64]:
    """Subject world coordinates (N, 3, RAS+ mm) to MNI coordinates (N, 3, RAS+ mm)."""
    return _apply_to_points(xyz, *transforms.mni_to_subject())


def points_from_mni(xyz_mni: npt.ArrayLike, transforms: Transforms) -> npt.NDArray[np.float64]:
    """MNI coordinates (N, 3, RAS+ mm) to subject world coordinates (N, 3, RAS+ mm)."""
    return _apply_to_points(xyz_mni, *transforms.subject_to_mni())


def read_affine(path: str | Path) -> npt.NDArray[np.float64]:
    """The 4x4 matrix (LPS mm) of an ANTs/ITK affine transform file (MATLAB format, as ANTs writes).

    ITK stores the 3x3 matrix A row by row, then the translation t, and the centre c apart
    (``fixed``): x -> A (x - c) + t + c.
    """
    try:
        mat = sio.loadmat(str(path))
        params = next(v for k, v in mat.items() if k.startswith("AffineTransform_")).ravel().astype(float)
        centre = mat["fixed"].ravel().astype(float)
    except (OSError, ValueError, sio.matlab.MatReadError, StopIteration, KeyError) as err:
        raise InputError(f"not an ANTs affine transform file ({type(err).__name__})", path=path) from None
    matrix = np.eye(4)
    matrix[:3, :3] = params[:9].reshape(3, 3)
    matrix[:3, 3] = params[9:12] + centre - matrix[:3, :3] @ centre
    return matrix


def _apply_to_points(xyz: npt.ArrayLike, files: list[str], invert: list[bool]) -> npt.NDArray[np.float64]:
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    if xyz.shape[0] == 0:
        return np.zeros((0, 3))
    lps = xyz @ RAS_TO_LPS  # ANTs points live in LPS, like its images
    for path, inverse in zip(files, invert):  # as ANTs moves points: in list order (images: reversed)
        lps = _affine_points(lps, path, inverse) if path.endswith(".mat") else _warp_points(lps, path)
    return lps @ RAS_TO_LPS


def _affine_points(lps: npt.NDArray[np.float64], path: str, inverse: bool) -> npt.NDArray[np.float64]:
    matrix = read_affine(path)
    if inverse:
        matrix = np.linalg.inv(matrix)
    return lps @ matrix[:3, :3].T + matrix[:3, 3]


def _warp_points(lps: npt.NDArray[np.float64], path: str) -> npt.NDArray[np.float64]:
    """Points through an ANTs displacement field (after SyN): the one use of ANTs here."""
    from cmbflow.anat import (
        ants,  # ITK's threads are set before ANTs loads (see cmbflow.anat)
    )

    points = pd.DataFrame(lps, columns=["x", "y", "z"])
    moved = ants.apply_transforms_to_points(3, points, [path], whichtoinvert=[False])
    return moved[["x", "y", "z"]].to_numpy(dtype=float)
