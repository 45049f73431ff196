"""Loading, checking and writing NIfTI images; voxel <-> world (RAS+ mm) coordinates.

Every position cmbflow reports comes from the image affine, so nothing here assumes a voxel
order or orientation.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cmbflow.errors import InputError

#: Plausible voxel edge lengths (mm) of a clinical or research GRE/SWI scan.
VOXEL_SIZE_RANGE_MM = (0.1, 10.0)


def load_image(
    path: str | Path,
    *,
    subject: str | None = None,
    allow_4d: bool = False,
) -> nib.Nifti1Image:
    """Load a NIfTI image, read all its voxels and check that they are usable.

    Returns an image whose data are float32 in memory (``img.get_fdata(dtype=np.float32)`` is
    cheap afterwards). Raises :class:`InputError` naming subject and file on any problem.
    """
    path = Path(path)

    def fail(problem: str, fix: str) -> InputError:
        return InputError(problem, subject=subject, path=path, fix=fix)

    if not path.exists():
        raise fail("file not found", "check the BIDS dataset and the input filters in the config")
    if path.stat().st_size == 0:
        raise fail("file is empty (0 bytes)", "re-export or re-copy this image")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as err:
        raise fail(
            f"not a readable NIfTI image ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
            "the file is corrupt or truncated; re-export or re-copy it",
        ) from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise fail(f"not a NIfTI image ({type(img).__name__})", "convert it to NIfTI (e.g. dcm2niix)")

    while data.ndim > 3 and data.shape[-1] == 1:  # trailing singleton axes (e.g. 64x64x30x1)
        data = data[..., 0]
    if data.ndim == 4 and not allow_4d:
        raise fail(
            f"4D image of shape {data.shape} where a 3D volume is expected",
            "split echoes/volumes into BIDS files with echo- entities, or set 'echo' in the config",
        )
    if data.ndim not in (3, 4):
        raise fail(f"image has {data.ndim} dimensions {data.shape}", "provide a 3D volume")
    if min(data.shape[:3]) < 2:
        raise fail(f"image of shape {data.shape} has no extent along an axis", "provide a 3D volume")

    affine = img.affine
    check_affine(affine, subject=subject, path=path)
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise fail(
            f"{n_bad} voxels are NaN or infinite",
            "fix the export, or replace non-finite voxels with 0 before running",
        )
    if float(data.max()) == float(data.min()):
        raise fail(f"image is constant (every voxel is {float(data.min()):g})", "check the export")

    header = img.header.copy()
    header.set_data_dtype(np.float32)
    return nib.Nifti1Image(data, affine, header)


def check_affine(affine: npt.NDArray[np.floating], *, subject: str | None, path: str | Path) -> None:
    """Reject affines that cannot map voxels to millimetres."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(linear)) < 1e-9:
        raise InputError(
            "degenerate affine (not invertible)",
            subject=subject,
            path=path,
            fix="repair the qform/sform of the file",
        )
    sizes = voxel_sizes(affine)
    lo, hi = VOXEL_SIZE_RANGE_MM
    if np.any(sizes < lo) or np.any(sizes > hi):
        raise InputError(
            f"implausible voxel size {np.round(sizes, 4).tolist()} mm (expected {lo}-{hi} mm)",
            subject=subject,
            path=path,
            fix="repair the qform/sform or pixdim of the file",
        )


def voxel_sizes(affine: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Edge lengths (mm) of a voxel along the three array axes."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def ijk_to_xyz(affine: npt.NDArray[np.floating], ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Voxel indices (N, 3) to world coordinates (N, 3) in RAS+ mm."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return nib.affines.apply_affine(np.asarray(affine, dtype=float), ijk)


def xyz_to_ijk(affine: npt.NDArray[np.floating], xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """World coordinates (N, 3) in RAS+ mm to (fractional) voxel indices (N, 3)."""
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    return nib.affines.apply_affine(np.linalg.inv(np.asarray(affine, dtype=float)), xyz)


def b0_direction_voxel(affine: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Unit vector of the main field (world +z, the scanner bore axis) in voxel-index space.

    Scaled by voxel size so that it is a direction in millimetres along the array axes.
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    direction_ijk = np.linalg.solve(linear, np.array([0.0, 0.0, 1.0]))
    direction_mm = direction_ijk * voxel_sizes(affine)
    return direction_mm / np.linalg.norm(direction_mm)


def check_same_grid(
    reference: nib.Nifti1Image,
    other: nib.Nifti1Image,
    *,
    subject: str | None,
    path: str | Path,
    atol_mm: float = 1e-3,
) -> None:
    """Raise if ``other`` is not on the voxel grid of ``reference`` (shape and affine)."""
    if reference.shape[:3] != other.shape[:3]:
        raise InputError(
            f"grid {other.shape[:3]} differs from the magnitude grid {reference.shape[:3]}",
            subject=subject,
            path=path,
            fix="magnitude and phase must come from the same acquisition and reconstruction",
        )
    if not np.allclose(reference.affine, other.affine, atol=atol_mm):
        raise InputError(
            "affine differs from the magnitude's affine",
            subject=subject,
            path=path,
            fix="magnitude and phase must come from the same acquisition and reconstruction",
        )


def read_sidecar(image_path: str | Path, *, subject: str | None = None) -> dict:
    """The BIDS JSON sidecar next to an image, or ``{}`` when there is none."""
    image_path = Path(image_path)
    name = image_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    sidecar = image_path.with_name(name + ".json")
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise InputError(
            f"sidecar is not valid JSON ({err.msg} at line {err.lineno})",
            subject=subject,
            path=sidecar,
            fix="repair or remove the JSON sidecar",
        ) from err
    if not isinstance(meta, dict):
        raise InputError("sidecar is not a JSON object", subject=subject, path=sidecar,
                         fix="repair or remove the JSON sidecar")
    return meta


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A failed step therefore never leaves a half-written output behind. A killed one (SIGKILL, a
    lost node) leaves its hidden temporary file, which the step removes when it runs again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{path.name.split('.')[0]}.", ".partial" + "".join(path.suffixes)
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared like any file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(
    data: npt.ArrayLike,
    affine: npt.NDArray[np.floating],
    path: str | Path,
    *,
    dtype: npt.DTypeLike = np.float32,
) -> None:
    """Write a NIfTI image atomically with both qform and sform set to ``affine``."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_json(payload: dict, path: str | Path) -> None:
    """Write a JSON file atomically (sorted keys, so reruns give identical bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def mask_box(mask: npt.NDArray[np.bool_], margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """The bounding box of the non-empty ``mask``, widened by ``margin`` voxels (one per axis or
    the same for all) and clipped to the array."""
    margins = np.broadcast_to(margin, (mask.ndim,))
    box = []
    for axis, extra in enumerate(margins):
        along = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(slice(max(int(along[0]) - int(extra), 0), min(int(along[-1]) + int(extra) + 1, mask.shape[axis])))
    return tuple(box)
