"""Points through ANTs transform files: the numpy affine agrees with ANTs' own point mapping."""

from __future__ import annotations

import ants
import numpy as np
import pandas as pd
import pytest

from cmbflow.errors import InputError
from cmbflow.transforms import RAS_TO_LPS, Transforms, points_from_mni, points_to_mni, read_affine

# ANTs maps points in single precision: its results are within ~2e-5 mm of exact here.
ANTS_ATOL = 1e-4


def _write_affine(path, rng) -> str:
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.eye(3) + 0.1 * rng.standard_normal((3, 3)),
        translation=5 * rng.standard_normal(3), center=20 * rng.standard_normal(3),
    )
    ants.write_transform(tx, str(path))
    return str(path)


def _write_warp(path, rng) -> str:
    """A smooth displacement field (up to ~2 mm) as ANTs writes SyN warps."""
    noise = [ants.smooth_image(ants.from_numpy(30 * rng.standard_normal((40, 40, 40)).astype(np.float32)), 4)
             for _ in range(3)]
    field = np.stack([n.numpy() for n in noise], axis=-1)
    ants.image_write(ants.from_numpy(field, origin=(-60.0,) * 3, spacing=(3.0,) * 3, has_components=True), str(path))
    return str(path)


def _ants_points(xyz_ras, files, invert):
    lps = pd.DataFrame(np.asarray(xyz_ras) @ RAS_TO_LPS, columns=["x", "y", "z"])
    moved = ants.apply_transforms_to_points(3, lps, files, whichtoinvert=invert)
    return moved[["x", "y", "z"]].to_numpy(float) @ RAS_TO_LPS


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(7)
    return (_write_affine(tmp_path / "affine.mat", rng), _write_warp(tmp_path / "warp.nii.gz", rng),
            _write_warp(tmp_path / "inverse-warp.nii.gz", rng))


def test_affine_points_match_ants(files):
    transforms = Transforms(files[0])
    points = np.random.default_rng(0).uniform(-40, 40, (300, 3))
    to_mni = points_to_mni(points, transforms)
    np.testing.assert_allclose(to_mni, _ants_points(points, [files[0]], [True]), atol=ANTS_ATOL)
    np.testing.assert_allclose(points_from_mni(points, transforms), _ants_points(points, [files[0]], [False]),
                               atol=ANTS_ATOL)
    np.testing.assert_allclose(points_from_mni(to_mni, transforms), points, atol=1e-9)
    assert points_to_mni(np.zeros((0, 3)), transforms).shape == (0, 3)
    assert points_to_mni(points[0], transforms).shape == (1, 3)


def test_affine_and_warp_compose_as_in_ants(files):
    transforms = Transforms(*files)
    points = np.random.default_rng(1).uniform(-40, 40, (300, 3))
    np.testing.assert_allclose(points_to_mni(points, transforms), _ants_points(points, *transforms.mni_to_subject()),
                               atol=ANTS_ATOL)
    np.testing.assert_allclose(points_from_mni(points, transforms), _ants_points(points, *transforms.subject_to_mni()),
                               atol=ANTS_ATOL)


def test_read_affine_rejects_other_files(tmp_path, files):
    assert read_affine(files[0]).shape == (4, 4)
    junk = tmp_path / "junk.mat"
    junk.write_text("not a transform")
    with pytest.raises(InputError, match="not an ANTs affine"):
        read_affine(junk)
