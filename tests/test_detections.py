"""One call per lesion: greedy suppression of less probable candidates nearby."""

import numpy as np

from cmbflow.detections import SAME_LESION_MM, keep_first_within, mirror_vetoed, superseded


def test_keep_first_within_is_one_pass_in_row_order() -> None:
    xyz = [[0, 0, 0], [0.5, 0, 0], [3, 0, 0], [5.4, 0, 0]]
    assert keep_first_within(xyz, 2.5).tolist() == [True, False, True, False]
    assert keep_first_within(np.zeros((0, 3)), 2.5).tolist() == []


def test_only_the_most_probable_of_a_lesion_stands() -> None:
    # A bleed seen on two thick slices (3 mm apart) and a chain: c is 3 mm from the superseded d
    # only, so it stands.
    xyz = np.array([[0, 0, 0], [0, 0, 3.0], [20, 0, 0], [20, 0, 3.0], [20, 0, 6.0]])
    probability = np.array([0.6, 0.9, 0.8, 0.5, 0.4])
    assert superseded(xyz, probability).tolist() == [True, False, False, True, False]
    assert not superseded(xyz[[0, 2]], probability[[0, 2]]).any()
    assert SAME_LESION_MM > 3.0


def test_standing_above_a_threshold_is_suppression_of_the_candidates_above_it() -> None:
    # What stands never depends on less probable candidates, so a FROC over standing candidates
    # equals suppression redone at every threshold.
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 20, (200, 3))
    probability = rng.uniform(size=200)
    gone = superseded(xyz, probability)
    for threshold in (0.2, 0.5, 0.9):
        above = probability >= threshold
        assert np.array_equal(superseded(xyz[above], probability[above]), gone[above])


def test_the_mirror_veto_rules_out_a_partner_at_least_that_dark_and_nothing_without_one():
    ratio = [0.0, 0.79, 0.8, 2.0]
    assert mirror_vetoed(ratio, 0.8).tolist() == [False, False, True, True]
    assert not mirror_vetoed(ratio, None).any()
