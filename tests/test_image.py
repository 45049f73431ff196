import gzip

import nibabel as nib
import numpy as np
import pytest

from cmbflow.errors import InputError
from cmbflow.image import (
    atomic_path,
    b0_direction_voxel,
    check_same_grid,
    ijk_to_xyz,
    load_image,
    save_image,
    voxel_sizes,
    xyz_to_ijk,
)


def lps_affine(voxel=(0.9, 0.9, 1.8)):
    """An LPS-ordered, anisotropic affine: i runs right->left, j anterior->posterior."""
    return np.array([[-voxel[0], 0, 0, 90.0], [0, -voxel[1], 0, 120.0], [0, 0, voxel[2], -60.0], [0, 0, 0, 1]])


def write(tmp_path, data, affine=None, name="img.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def test_coordinates_follow_the_affine():
    affine = lps_affine()
    xyz = ijk_to_xyz(affine, [[10, 20, 5]])
    assert np.allclose(xyz, [[90 - 9.0, 120 - 18.0, -60 + 9.0]])
    assert np.allclose(xyz_to_ijk(affine, xyz), [[10, 20, 5]])
    assert np.allclose(voxel_sizes(affine), [0.9, 0.9, 1.8])


def test_b0_direction_in_permuted_axes():
    # third world axis (z, the bore) lies along the first array axis here
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1]])
    assert np.allclose(np.abs(b0_direction_voxel(affine)), [1, 0, 0])


def test_load_image_roundtrip(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    path = tmp_path / "a.nii.gz"
    save_image(data, lps_affine(), path)
    img = load_image(path, subject="sub-01")
    assert np.allclose(img.get_fdata(), data)
    assert np.allclose(img.affine, lps_affine())
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_bytes(b"not an image at all" * 20), p)[1], "not a readable NIfTI"),
    ],
)
def test_unreadable_files_name_subject_and_file(tmp_path, make, message):
    path = make(tmp_path / "sub-01_part-mag_T2starw.nii.gz")
    with pytest.raises(InputError) as err:
        load_image(path, subject="sub-01")
    text = str(err.value)
    assert text.startswith("sub-01: ") and str(path) in text and message in text
    assert "\n" not in text


def test_truncated_file(tmp_path):
    path = write(tmp_path, np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(path, subject="sub-01")


def test_4d_rejected_unless_allowed(tmp_path):
    path = write(tmp_path, np.random.default_rng(0).random((5, 5, 5, 3)).astype(np.float32))
    with pytest.raises(InputError, match="4D image"):
        load_image(path, subject="sub-01")
    assert load_image(path, allow_4d=True).shape == (5, 5, 5, 3)


@pytest.mark.parametrize(
    "data, affine, message",
    [
        (np.full((5, 5, 5), np.nan), None, "NaN or infinite"),
        (np.where(np.arange(125.0).reshape(5, 5, 5) == 7, np.inf, 1.0), None, "1 voxels are NaN or infinite"),
        (np.zeros((5, 5, 5)), None, "constant"),
        (np.arange(125.0).reshape(5, 5, 5), np.diag([0.01, 1, 1, 1]), "implausible voxel size"),
        (np.arange(125.0).reshape(5, 5, 5), np.array([[1.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]), "degenerate affine"),
    ],
)
def test_unusable_voxels_or_affine(tmp_path, data, affine, message):
    path = write(tmp_path, data.astype(np.float32), affine)
    with pytest.raises(InputError, match=message) as err:
        load_image(path, subject="sub-01")
    assert str(err.value).startswith(f"sub-01: {path}: ") and "; " in str(err.value)


def test_grid_mismatch(tmp_path):
    a = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), lps_affine())
    b = nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), lps_affine())
    c = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for other, message in ((b, "grid"), (c, "affine")):
        with pytest.raises(InputError, match=message):
            check_same_grid(a, other, subject="sub-01", path="phase.nii.gz")


def test_written_files_get_normal_permissions(tmp_path):
    save_image(np.ones((3, 3, 3)), np.eye(4), tmp_path / "a.nii.gz")
    assert (tmp_path / "a.nii.gz").stat().st_mode & 0o044 == 0o044


def test_a_killed_write_leaves_a_hidden_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "sub-001_desc-cmb_detections.tsv"
    killed = atomic_path(target)  # entered and never left, as under SIGKILL
    killed.__enter__().write_text("half")
    assert not target.exists() and len(list(tmp_path.iterdir())) == 1
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_text() == "whole"
