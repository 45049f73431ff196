"""Candidate generation and features on a synthetic anisotropic, LPS-ordered volume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cmbflow.candidates import (
    CANDIDATE_COLUMNS,
    ball_footprint,
    contrast_ratio,
    dark_components,
    darkest_nearby,
    darkest_voxels,
    distance_to_outside,
    drop_repeated_centres,
    find_candidates,
    phase_dipole,
)
from cmbflow.config import CandidateParams
from cmbflow.evaluate import match_detections
from cmbflow.image import ijk_to_xyz, voxel_sizes, xyz_to_ijk

AFFINE = np.array([
    [-0.9, 0.0, 0.0, 36.0],
    [0.0, -0.9, 0.0, 30.0],
    [0.0, 0.0, 1.8, -36.0],
    [0.0, 0.0, 0.0, 1.0],
])
SHAPE = (80, 76, 40)
SPHERES_XYZ = np.array(
    [[10.0, 12.0, -20.0], [-12.0, 10.0, -8.0], [12.0, -14.0, 4.0], [-10.0, -12.0, 16.0], [0.0, 2.0, 26.0]]
)
DIAMETERS_MM = np.array([2.0, 3.0, 4.0, 5.0, 6.0])
TUBE_X, TUBE_Z = -22.0, 0.0  # a 1.6 mm wide vessel along world y through the whole volume


def world_grid() -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk_to_xyz(AFFINE, ijk).reshape(*SHAPE, 3)


def synthetic_scan(seed: int = 0) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Dark spheres and a dark tube (partial-volumed) on a biased, noisy background."""
    xyz = world_grid()
    darkness = np.zeros(SHAPE)
    for centre, diameter in zip(SPHERES_XYZ, DIAMETERS_MM):
        dist = np.linalg.norm(xyz - centre, axis=-1)
        darkness = np.maximum(darkness, 0.7 * np.clip(diameter / 2 + 0.5 - dist, 0, 1))
    tube = np.hypot(xyz[..., 0] - TUBE_X, xyz[..., 2] - TUBE_Z)
    darkness = np.maximum(darkness, 0.6 * np.clip(0.8 + 0.5 - tube, 0, 1))
    bias = 1.0 + 0.2 * xyz[..., 0] / 40.0
    rng = np.random.default_rng(seed)
    data = 300.0 * bias * (1.0 - darkness) + 9.0 * rng.standard_normal(SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3:-3, 3:-3, 2:-2] = True
    return nib.Nifti1Image(data.astype(np.float32), AFFINE), mask


@pytest.fixture(scope="module")
def candidates() -> pd.DataFrame:
    image, mask = synthetic_scan()
    return find_candidates(image, mask, None, CandidateParams())


def test_every_sphere_is_a_candidate_at_its_world_position(candidates: pd.DataFrame) -> None:
    assert list(candidates.columns) == list(CANDIDATE_COLUMNS)
    match = match_detections(candidates[["x", "y", "z"]], SPHERES_XYZ, DIAMETERS_MM / 2, voxel_sizes(AFFINE))
    assert match.false_negatives == 0
    assert np.all(match.distances_mm < 1.0)
    # i j k is the voxel that contains x y z
    ijk = np.rint(xyz_to_ijk(AFFINE, candidates[["x", "y", "z"]])).astype(int)
    assert np.array_equal(ijk, candidates[["i", "j", "k"]].to_numpy())


def test_spheres_are_round_and_sized_and_the_tube_is_not(candidates: pd.DataFrame) -> None:
    xyz = candidates[["x", "y", "z"]].to_numpy()
    for centre, diameter in zip(SPHERES_XYZ, DIAMETERS_MM):
        row = candidates.iloc[np.argmin(np.linalg.norm(xyz - centre, axis=1))]
        assert row["elongation"] < 2.0
        assert row["contrast"] > 0.5
        if diameter >= 3:
            assert row["roundness"] > 0.45
            assert row["radius_mm"] == pytest.approx(diameter / 2, abs=0.75)
    # Stage 1 favours recall: the vessel may give several candidates, all marked as tubular.
    on_tube = np.hypot(xyz[:, 0] - TUBE_X, xyz[:, 2] - TUBE_Z) < 2.0
    assert np.all(candidates.loc[on_tube, "elongation"] > 3.0)
    assert np.all(candidates.loc[on_tube, "roundness"] < 0.3)
    assert len(candidates) == len(SPHERES_XYZ) + on_tube.sum()  # nothing from the noise


def test_no_candidates_outside_mask_and_edge_distance(candidates: pd.DataFrame) -> None:
    image, mask = synthetic_scan()
    assert mask[tuple(candidates[["i", "j", "k"]].to_numpy().T)].all()
    assert (candidates["edge_distance_mm"] > 0).all()
    assert candidates["phase_dipole"].isna().all()


def test_empty_scan_gives_empty_table() -> None:
    rng = np.random.default_rng(3)
    data = (100.0 + rng.standard_normal(SHAPE)).astype(np.float32)
    table = find_candidates(nib.Nifti1Image(data, AFFINE), np.ones(SHAPE, bool), None, CandidateParams())
    assert table.empty and list(table.columns) == list(CANDIDATE_COLUMNS)


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("sign", [-1, 1])
def test_phase_dipole_sign_follows_susceptibility(axes: tuple[int, int, int], sign: int) -> None:
    # Field of a magnetised sphere (~ (3cos^2 - 1) / r^3 around world z) on a grid whose array
    # axes may be permuted; phase = sign * field for a paramagnetic source.
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.9, 0.9, 1.8])[:, list(axes)]
    shape = tuple(np.array([40, 40, 20])[list(axes)])
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    centre_ijk = (np.array(shape) - 1) / 2
    offset = ijk_to_xyz(affine, ijk) - ijk_to_xyz(affine, centre_ijk)
    r = np.maximum(np.linalg.norm(offset, axis=1), 1.0)
    field = (3 * (offset[:, 2] / r) ** 2 - 1) / r**3
    for chi, expected in ((+1.0, 1.0), (-1.0, -1.0)):  # paramagnetic bleed, diamagnetic calcification
        phase = (sign * chi * 2.0 * field).reshape(shape)
        value = phase_dipole(phase, centre_ijk, affine, 1.5, 5.0, paramagnetic_sign=sign)
        assert np.sign(value) == expected and abs(value) > 0.01


def test_bleed_inside_a_darker_nucleus_is_measured_against_its_own_surroundings() -> None:
    # A 4 mm bleed in the middle of a 16 mm wide dark (iron-rich) band: the band must neither
    # swallow the bleed's region nor dilute its contrast.
    xyz = world_grid()
    band = np.abs(xyz[..., 0]) < 8.0
    bleed = np.linalg.norm(xyz - np.array([0.0, 0.0, 0.0]), axis=-1)
    data = np.where(band, 0.55, 1.0) * (1.0 - 0.9 * np.clip(2.0 + 0.5 - bleed, 0, 1))
    data = 300.0 * data + 6.0 * np.random.default_rng(2).standard_normal(SHAPE)
    mask = np.ones(SHAPE, dtype=bool)
    table = find_candidates(nib.Nifti1Image(data.astype(np.float32), AFFINE), mask, None, CandidateParams())
    row = table.iloc[np.argmin(np.linalg.norm(table[["x", "y", "z"]].to_numpy(), axis=1))]
    assert np.linalg.norm(row[["x", "y", "z"]].to_numpy(float)) < 1.0
    assert row["contrast"] > 0.75
    assert row["radius_mm"] == pytest.approx(2.0, abs=0.75)
    assert row["roundness"] > 0.45 and row["elongation"] < 1.6


def dark_ball_with_two_bleeds() -> tuple[np.ndarray, np.ndarray]:
    """A 22 mm ball at 40 % of the background (a deep grey nucleus at a long echo time) holding
    two bleeds, 4 mm and 3 mm wide, 8 mm apart. Returns the image and the bleeds' centres."""
    xyz = world_grid()
    centres = np.array([[-4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    data = np.where(np.linalg.norm(xyz, axis=-1) < 11.0, 0.4, 1.0)
    for centre, diameter, depth in zip(centres, (4.0, 3.0), (0.1, 0.15)):
        inside = np.clip(diameter / 2 + 0.5 - np.linalg.norm(xyz - centre, axis=-1), 0, 1)
        data = data * (1.0 - inside) + depth * inside
    data = 300.0 * data + 6.0 * np.random.default_rng(4).standard_normal(SHAPE)
    return data.astype(np.float32), centres


def test_dark_components_separate_a_bleed_from_a_larger_dark_region() -> None:
    data, centres = dark_ball_with_two_bleeds()
    mask = np.ones(SHAPE, dtype=bool)
    params = CandidateParams()
    ratio = contrast_ratio(data, mask, voxel_sizes(AFFINE), params)
    seeds_xyz = ijk_to_xyz(AFFINE, dark_components(ratio, mask, voxel_sizes(AFFINE), params))
    assert match_detections(seeds_xyz, centres, [2.0, 1.5], voxel_sizes(AFFINE)).false_negatives == 0
    # At the shallowest level alone each bleed is part of the ball, too large to be a bleed.
    shallow = params.model_copy(update={"component_contrasts": (0.25,)})
    seeds_xyz = ijk_to_xyz(AFFINE, dark_components(ratio, mask, voxel_sizes(AFFINE), shallow))
    assert match_detections(seeds_xyz, centres, [2.0, 1.5], voxel_sizes(AFFINE)).false_negatives == 2


def test_a_region_larger_than_a_bleed_claims_no_other_bleed() -> None:
    # With a first background from beyond the ball (a search reaching 20 mm), the darker bleed's
    # region is the whole ball; before regions this large stopped claiming the seeds inside them,
    # the second bleed was lost.
    data, centres = dark_ball_with_two_bleeds()
    params = CandidateParams(background_search_mm=20.0)
    table = find_candidates(nib.Nifti1Image(data, AFFINE), np.ones(SHAPE, dtype=bool), None, params)
    assert table["radius_mm"].max() > params.max_diameter_mm / 2.0
    match = match_detections(table[["x", "y", "z"]], centres, [2.0, 1.5], voxel_sizes(AFFINE))
    assert match.false_negatives == 0


def test_a_bleed_in_dark_tissue_is_measured_against_that_tissue() -> None:
    # The first background is the brightest shell within background_search_mm, here the ball:
    # each bleed's region is the bleed, not the ball.
    data, centres = dark_ball_with_two_bleeds()
    table = find_candidates(nib.Nifti1Image(data, AFFINE), np.ones(SHAPE, dtype=bool), None, CandidateParams())
    match = match_detections(table[["x", "y", "z"]], centres, [2.0, 1.5], voxel_sizes(AFFINE))
    assert match.false_negatives == 0
    radius = table["radius_mm"].to_numpy()[match.pairs[np.argsort(match.pairs[:, 1]), 0]]
    assert radius == pytest.approx([2.0, 1.5], abs=0.75)


def test_a_bleed_stretched_along_b0_is_one_candidate() -> None:
    # Blooming stretches a bleed along B0 (world z here): too elongated to claim the other seeds
    # inside it, so two seeds grew the same region and made two candidates 1.7 mm apart.
    xyz = world_grid()
    semi_axes = np.array([1.5, 1.5, 4.5])
    dist = np.sqrt((xyz**2 / semi_axes**2).sum(axis=-1))
    data = 300.0 * (1.0 - 0.85 * np.clip((1.0 - dist) * 4.0, 0, 1))
    data += 9.0 * np.random.default_rng(0).standard_normal(SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3:-3, 3:-3, 2:-2] = True
    table = find_candidates(nib.Nifti1Image(data.astype(np.float32), AFFINE), mask, None, CandidateParams())
    assert len(table) == 1
    assert np.linalg.norm(table[["x", "y", "z"]].to_numpy()[0]) < 1.0


def test_repeated_centres_keep_the_first_darkest_candidate() -> None:
    table = pd.DataFrame({"x": [0.0, 0.5, 3.0, 5.4], "y": 0.0, "z": 0.0, "contrast": [0.9, 0.8, 0.7, 0.6]})
    kept = drop_repeated_centres(table, 2.5)
    assert kept["contrast"].tolist() == [0.9, 0.7]  # 5.4 is within 2.5 of the kept 3.0


def test_darkest_nearby_moves_each_seed_as_a_search_of_its_footprint_would():
    rng = np.random.default_rng(3)
    ratio = rng.random((30, 20, 12)).astype(np.float32)
    ratio[10:14, 10:14, 5:8] = 0.0  # ties: the first of them in the footprint's order wins
    seeds = np.vstack([rng.integers(0, ratio.shape, size=(300, 3)), [[0, 0, 0], [29, 19, 11], [11, 11, 6]]])
    footprint = ball_footprint(2.0, (0.5, 0.7, 1.5))
    offsets = np.argwhere(footprint) - np.array(footprint.shape) // 2
    expected = []
    for seed in seeds:
        near = [tuple(v) for v in seed + offsets if np.all((v >= 0) & (v < ratio.shape))]
        expected.append(min(near, key=lambda v: (ratio[v], near.index(v))))
    np.testing.assert_array_equal(darkest_nearby(ratio, seeds, footprint), expected)


def test_darkest_voxels_match_scipys_minimum_position_with_ties_in_c_order():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 6, size=(25, 18, 9)).astype(np.float32)  # many ties
    labels, n = ndimage.label(values < 3)
    index = np.arange(1, n + 1)[::2]
    expected = [np.unravel_index(np.flatnonzero((labels == i) & (values == values[labels == i].min()))[0], values.shape)
                for i in index]
    np.testing.assert_array_equal(darkest_voxels(values, labels, index), expected)
    values += rng.random(values.shape).astype(np.float32) * 0.1  # no ties: scipy's answer
    np.testing.assert_array_equal(darkest_voxels(values, labels, index), ndimage.minimum_position(values, labels, index))


def test_distance_to_outside_equals_the_distance_transform_at_the_points():
    rng = np.random.default_rng(8)
    mask = ndimage.binary_opening(rng.random((30, 24, 14)) < 0.8)
    mask[:, :, 0] = True  # touching the array's edge: beyond it counts as outside
    sizes = np.array([0.5, 0.8, 2.0])
    points = np.argwhere(mask)
    expected = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sizes)[1:-1, 1:-1, 1:-1][tuple(points.T)]
    np.testing.assert_allclose(distance_to_outside(mask, points, sizes), expected, rtol=1e-12)
