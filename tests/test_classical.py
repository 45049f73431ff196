"""Rule-based scoring and calls on hand-made candidate features and on a synthetic scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.candidates import CandidateParams, find_candidates
from cmbflow.classical import ClassicalParams, call_microbleeds, rule_memberships, score_candidates

BLEED = {"radius_mm": 2.0, "contrast": 0.85, "roundness": 0.8, "elongation": 1.1, "frst": 0.15,
         "phase_dipole": 0.3, "edge_distance_mm": 20.0}


def table(**changes: list[float]) -> pd.DataFrame:
    """Copies of a typical bleed's features, with one column varied."""
    (column, values), = changes.items()
    rows = [dict(BLEED, **{column: v}) for v in values]
    return pd.DataFrame(rows)


def test_typical_bleed_is_called_with_high_probability() -> None:
    df = pd.DataFrame([BLEED])
    assert score_candidates(df, ClassicalParams()).iloc[0] > 0.9
    assert call_microbleeds(df, ClassicalParams()).iloc[0]


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("contrast", [0.3, 0.5, 0.7, 0.95]),
        ("roundness", [0.1, 0.3, 0.5, 1.0]),
        ("elongation", [6.0, 3.0, 2.0, 1.0]),
        ("frst", [0.0, 0.005, 0.012, 0.5]),
        ("phase_dipole", [-0.5, 0.0, 0.06, 0.5]),
        ("edge_distance_mm", [0.0, 1.5, 2.5, 30.0]),
    ],
)
def test_probability_is_monotone_in_each_feature(column: str, values: list[float]) -> None:
    prob = score_candidates(table(**{column: values}), ClassicalParams()).to_numpy()
    assert np.all(np.diff(prob) > 0) and np.all((prob >= 0) & (prob <= 1))


def test_size_rule_rejects_too_small_and_too_large() -> None:
    calls = call_microbleeds(table(radius_mm=[0.5, 1.5, 4.5, 7.0]), ClassicalParams())
    assert calls.tolist() == [False, True, True, False]


def test_calcification_rejected_only_when_phase_is_known() -> None:
    calcification = table(phase_dipole=[-0.4, np.nan])
    calls = call_microbleeds(calcification, ClassicalParams())
    assert calls.tolist() == [False, True]
    assert rule_memberships(calcification, ClassicalParams())["paramagnetic"].iloc[1] == 1.0


def test_threshold_controls_calls() -> None:
    df = pd.DataFrame([BLEED])
    assert not call_microbleeds(df, ClassicalParams(probability_threshold=1.0)).iloc[0]


def test_round_dark_sphere_scores_above_tube() -> None:
    # LPS-ordered 0.9 x 0.9 x 1.8 mm grid; dark spheres of 3-5 mm and a 1.6 mm wide tube along y.
    affine = np.array([[-0.9, 0, 0, 27.0], [0, -0.9, 0, 27.0], [0, 0, 1.8, -27.0], [0, 0, 0, 1]])
    shape = (60, 60, 30)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    spheres = np.array([[8.0, 8.0, -8.0], [-8.0, -6.0, 6.0], [9.0, -10.0, 12.0]])
    darkness = np.zeros(shape)
    for centre, diameter in zip(spheres, (3.0, 4.0, 5.0)):
        dist = np.linalg.norm(xyz - centre, axis=-1)
        darkness = np.maximum(darkness, 0.7 * np.clip(diameter / 2 + 0.5 - dist, 0, 1))
    tube = np.hypot(xyz[..., 0] + 15.0, xyz[..., 2])
    darkness = np.maximum(darkness, 0.6 * np.clip(1.3 - tube, 0, 1))
    data = 200.0 * (1 - darkness) + 6.0 * np.random.default_rng(5).standard_normal(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[2:-2, 2:-2, 2:-2] = True

    df = find_candidates(nib.Nifti1Image(data.astype(np.float32), affine), mask, None, CandidateParams())
    prob = score_candidates(df, ClassicalParams())
    calls = call_microbleeds(df, ClassicalParams())
    found = df[["x", "y", "z"]].to_numpy()
    on_tube = np.hypot(found[:, 0] + 15.0, found[:, 2]) < 2.0
    sphere_rows = [int(np.argmin(np.linalg.norm(found - c, axis=1))) for c in spheres]
    assert np.linalg.norm(found[sphere_rows] - spheres, axis=1).max() < 1.0
    assert on_tube.any()
    assert prob.iloc[sphere_rows].min() > prob[on_tube].max()
    assert calls.iloc[sphere_rows].all() and not calls[on_tube].any()


def test_empty_table_gives_empty_results() -> None:
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in BLEED})
    assert score_candidates(empty).empty
    calls = call_microbleeds(empty)
    assert calls.empty and calls.dtype == bool
