"""World-aligned candidate patches: independent of voxel size and array order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmbflow.config import CandidateParams
from cmbflow.image import ijk_to_xyz
from cmbflow.patches import (
    PATCH_MM,
    PATCH_SIZE,
    add_mirror_measures,
    candidate_patches,
    mirror_contrast,
    mirror_darkness,
    patch_offsets_mm,
    sample_patches,
)
from cmbflow.transforms import Transforms

CENTRE = np.array([4.0, -6.0, 10.0])


def scan(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A linear ramp in world x plus a dark 3 mm ball at CENTRE, sampled on the given grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk_to_xyz(affine, ijk).reshape(*shape, 3)
    ball = np.linalg.norm(xyz - CENTRE, axis=-1) <= 3.0
    return (100.0 + xyz[..., 0] - 80.0 * ball).astype(np.float32)


RAS = np.diag([0.5, 0.5, 0.5, 1.0]) + np.array([[0, 0, 0, -30.0], [0, 0, 0, -36], [0, 0, 0, -20], [0, 0, 0, 0]])
# Same field of view, stored as P-S-L (permuted and flipped axes) with 0.5 x 0.5 x 2 mm voxels.
PSL = np.array([[0.0, 0.0, -0.5, 30.0], [-0.5, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 0.0, 1.0]])


def test_offsets_cover_the_physical_extent_on_a_centred_grid():
    offsets = patch_offsets_mm()
    spacing = PATCH_MM / PATCH_SIZE
    assert offsets.shape == (PATCH_SIZE**3, 3)
    assert offsets.min() == pytest.approx(-(PATCH_MM - spacing) / 2) and offsets.mean(axis=0) == pytest.approx(0)


def test_patches_follow_world_axes_whatever_the_voxel_order():
    ras = sample_patches(scan(RAS, (121, 145, 81)), RAS, [CENTRE])[0]
    psl = sample_patches(scan(PSL, (133, 21, 121)), PSL, [CENTRE])[0]
    # The ramp rises along the first patch axis (world x) in both, by 1.25 mm per sample.
    assert np.diff(ras[:, 0, 0]).mean() == pytest.approx(PATCH_MM / PATCH_SIZE, abs=0.05)
    assert np.diff(psl[:, 0, 0]).mean() == pytest.approx(PATCH_MM / PATCH_SIZE, abs=0.05)
    # The ball is dark at the centre in both; the 2 mm slices blur it, but only along world z.
    middle = PATCH_SIZE // 2
    assert ras[middle, middle, middle] < 40 and psl[middle, middle, middle] < 60
    assert np.abs(ras[:, :, 0] - psl[:, :, 0]).max() < 1.0  # far from the ball: the same ramp


def test_channels_are_normalised_and_phase_signed():
    affine = RAS
    magnitude = scan(affine, (121, 145, 81))
    mask = np.ones(magnitude.shape, dtype=bool)
    phase = np.full(magnitude.shape, -0.5, dtype=np.float32)  # paramagnetic with the default sign
    patches = candidate_patches(magnitude, mask, affine, [CENTRE, CENTRE + 5], phase, paramagnetic_sign=-1)
    assert patches.shape == (2, 2, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE) and patches.dtype == np.float32
    assert patches[:, 0].max() <= 2.0 and np.median(patches[1, 0]) == pytest.approx(1.0, abs=0.1)
    assert patches[:, 1] == pytest.approx(0.5 / np.pi)
    assert candidate_patches(magnitude, mask, affine, [CENTRE]).shape[1] == 1  # no phase: one channel
    assert candidate_patches(magnitude, mask, affine, np.zeros((0, 3))).shape == (0, 1, *(PATCH_SIZE,) * 3)


def test_the_wide_view_shows_what_lies_beyond_the_small_patch():
    magnitude = scan(RAS, (121, 145, 81))
    mask = np.ones(magnitude.shape, dtype=bool)
    phase = np.full(magnitude.shape, -0.5, dtype=np.float32)
    beside = CENTRE + [0.0, 14.0, 0.0]  # the dark ball 14 mm away: beyond 10 mm, within 20 mm
    small_mag, wide_mag, small_phase, wide_phase = candidate_patches(
        magnitude, mask, RAS, [beside], phase, paramagnetic_sign=-1, context_mm=40.0)[0]
    assert small_mag.min() > 0.6 and wide_mag.min() < 0.5
    assert small_phase == pytest.approx(0.5 / np.pi) and wide_phase == pytest.approx(0.5 / np.pi)


def test_the_wide_view_is_smoothed_to_its_spacing_not_aliased():
    rng = np.random.default_rng(0)
    magnitude = (100.0 + 30.0 * rng.standard_normal((121, 145, 81))).astype(np.float32)
    small, wide = candidate_patches(magnitude, magnitude > -np.inf, RAS, [[0.0, 0.0, 0.0]], context_mm=40.0)[0]
    # Voxel noise (0.3): the 1.25 mm samples keep half of it (measured 0.149), the 2.5 mm view
    # averages it away (0.015).
    assert small.std() > 0.1 and wide.std() < 0.03


def test_empty_brain_is_an_error():
    magnitude = np.zeros((10, 10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="no positive signal"):
        candidate_patches(magnitude, magnitude > 0, np.eye(4), [[5.0, 5.0, 5.0]])


def test_a_mirrored_twin_gives_its_relative_contrast_and_a_lone_spot_none():
    mni = [[5.0, -20.0, -9.0], [-6.0, -21.0, -8.0], [30.0, 10.0, 20.0], [-20.0, 10.0, 20.0], [0.5, 0.0, 0.0]]
    contrast = [0.5, 0.25, 0.8, 0.9, 0.6]
    ratio = mirror_contrast(mni, contrast)
    # The red-nucleus-like pair sees each other (within 4 mm of the mirror image); the spot at
    # x=30 has no twin (x=-20 is 10 mm off), nor has the one on the midline (itself does not count).
    assert ratio == pytest.approx([0.5, 2.0, 0.0, 0.0, 0.0])
    assert mirror_contrast(np.zeros((0, 3)), []).shape == (0,)


def test_the_image_at_the_mirror_gives_its_darkness_relative_to_the_candidate():
    # 1 mm LAS grid (x flipped, so world comes from the affine), centre voxel at world (0, 0, 0).
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (20.0, -20.0, -20.0)
    ratio = np.ones((41, 41, 41), dtype=np.float32)
    dark = 0.4  # contrast 0.6 at world (10, 0, 0) and (-11, 1, 0): a nucleus pair 1.4 mm off symmetry
    for x, y in ((10, 0), (-11, 1)):
        ratio[20 - x, 20 + y, 20] = dark
    ratio[20 - 0, 20 + 10, 20] = dark  # a lone dark spot on the midline at (0, 10, 0)
    xyz = np.array([[10.0, 0.0, 0.0], [-11.0, 1.0, 0.0], [0.0, 10.0, 0.0], [15.0, -15.0, 0.0], [10.0, 0.0, 0.0]])
    mirror = xyz * (-1.0, 1.0, 1.0)  # MNI = world here
    mirror[4] = (100.0, 0.0, 0.0)  # a mirror image outside the field of view: nothing dark there
    darkness = mirror_darkness(ratio, affine, xyz, mirror, own_radius_mm=[1.0] * 5, contrast=[0.3, 0.6, 0.6, 0.5, 0.3])
    # Each twin sees the other (relative to its own contrast); the midline spot does not see
    # itself; nor does a spot in plain tissue or one whose mirror is outside the image.
    assert darkness == pytest.approx([2.0, 1.0, 0.0, 0.0, 0.0])
    assert mirror_darkness(ratio, affine, np.zeros((0, 3)), np.zeros((0, 3)), [], []).shape == (0,)


def test_a_nucleus_pair_is_dark_at_the_mirror_and_one_voxel_of_noise_is_not(tmp_path):
    # A 1 mm head in MNI space (identity registration): a nucleus pair of radius 3 mm at x = +-12,
    # and a bleed at x = 20 whose mirror image holds one voxel as dark as itself (noise).
    ants = pytest.importorskip("ants")
    affine = np.eye(4)
    affine[:3, 3] = -30.0
    grid = np.stack(np.meshgrid(*[np.arange(61) - 30.0] * 3, indexing="ij"), axis=-1)
    magnitude = np.ones((61, 61, 61), dtype=np.float32)
    for x in (12.0, -12.0):
        magnitude[np.linalg.norm(grid - (x, 0.0, 0.0), axis=-1) <= 3.0] = 0.5
    magnitude[30 + 20, 30 + 10, 30] = 0.5  # the bleed
    magnitude[30 - 20, 30 + 10, 30] = 0.5  # noise at its mirror image
    brain = np.linalg.norm(grid, axis=-1) <= 28.0
    identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(identity, str(tmp_path / "xfm.mat"))
    xyz = [[12.0, 0.0, 0.0], [20.0, 10.0, 0.0]]
    table = pd.DataFrame(xyz, columns=["x", "y", "z"]).assign(contrast=0.5, radius_mm=[3.0, 0.5])
    table[["mni_x", "mni_y", "mni_z"]] = xyz
    add_mirror_measures(table, magnitude, brain, affine, Transforms(tmp_path / "xfm.mat"), CandidateParams())
    nucleus, bleed = table["mirror_darkness"]
    assert nucleus > 0.9 and bleed < 0.6  # the smoothing keeps the nucleus's twin and not the noise
    assert table["mirror_contrast"].tolist() == [0.0, 0.0]  # no other candidate in this table
