"""Adapting the classifier to a site (cmbflow.finetune): labels from ratings, recalibration."""

import numpy as np
import pandas as pd
import pytest

from cmbflow.evaluate import ratings_from_truth
from cmbflow.finetune import MISSED_RADIUS_MM, choose_site_threshold, fit_temperature, label_rated_candidates
from cmbflow.training import ScanScores

VOXEL = (1.0, 1.0, 2.0)


def candidates_table(rows):
    """(x, y, z, is_cmb, radius_mm) rows as the workflow's candidates table."""
    return pd.DataFrame(rows, columns=["x", "y", "z", "is_cmb", "radius_mm"])


def test_rated_candidates_are_labelled_from_the_verdicts_and_the_missed_bleeds():
    table = candidates_table([
        (0, 0, 0, True, 1.2),     # accepted call
        (2, 0, 0, False, 1.0),    # a duplicate of the accepted bleed: left out
        (30, 0, 0, True, 1.0),    # rejected call
        (60, 0, 0, True, 1.0),    # unsure call: left out, and not scored
        (61, 1, 0, False, 1.0),   # beside the unsure call: likewise
        (90, 0, 0, False, 1.0),   # not called, marked missed (the mark 1 mm off)
        (120, 0, 0, False, 1.0),  # not called, not marked: not a bleed
    ])
    target, scored, bleeds_xyz, bleeds_radius = label_rated_candidates(
        table, ["accept", "reject", "unsure"], [(91, 0, 0), (150, 0, 0)], VOXEL)
    assert target.tolist() == [1, -1, 0, -1, -1, 1, 0]
    assert scored.tolist() == [True, True, True, False, False, True, True]
    # The bleeds scored against: the accepted call at its radius, each missed mark at the typical one.
    assert bleeds_xyz.tolist() == [[0, 0, 0], [91, 0, 0], [150, 0, 0]]
    assert bleeds_radius.tolist() == [1.2, MISSED_RADIUS_MM, MISSED_RADIUS_MM]


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 20000)
    target = rng.random(20000) < 1 / (1 + np.exp(-logits / 2.0))  # the truth is half as sure
    assert fit_temperature(logits, target) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(logits, rng.random(20000) < 1 / (1 + np.exp(-logits))) == pytest.approx(1.0, rel=0.1)


def test_site_threshold_most_sensitive_within_the_budget_never_below_the_sensitivity():
    truth = np.array([[0.0, 0, 0], [50, 0, 0]])
    # Two bleeds at 0.9 and 0.6; false calls at 0.95, 0.7 and 0.3.
    scan = ScanScores(np.array([[0.0, 0, 0], [50, 0, 0], [100, 0, 0], [150, 0, 0], [200, 0, 0]]),
                      np.array([0.9, 0.6, 0.95, 0.7, 0.3]), truth, np.array([1.5, 1.5]), np.array(VOXEL))
    assert choose_site_threshold([scan], 0.5, 1.0) == pytest.approx(0.9)  # the most sensitive within 1 false call
    assert choose_site_threshold([scan], 0.5, 3.0) == pytest.approx(0.3)  # within 3: the budget spent
    assert choose_site_threshold([scan], 0.5, 9.0) == pytest.approx(0.3)  # more budget than candidates
    # Within 1 false call only one bleed is found: keeping both costs the fewest false calls that does.
    assert choose_site_threshold([scan], 1.0, 1.0) == pytest.approx(0.6)


def test_ratings_from_truth_accept_reject_and_missed():
    calls = pd.DataFrame({"x": [0.0, 40.0], "y": [0.0, 0.0], "z": [0.0, 0.0]})
    truth = pd.DataFrame({"x": [0.5, 80.0, 40.0], "y": [0.0] * 3, "z": [0.0] * 3, "diameter_mm": [3.0] * 3,
                          "kind": ["cmb", "cmb", "calcification"]})
    ratings = ratings_from_truth(calls, truth, VOXEL)
    assert ratings.values.tolist() == [[0.0, 0.0, 0.0, "accept"], [40.0, 0.0, 0.0, "reject"],
                                       [80.0, 0.0, 0.0, "missed"]]
