"""Lesion matching, detection metrics and FROC on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmbflow.evaluate import detection_metrics, froc, froc_curve, match_detections

VOXEL = (0.9, 0.9, 1.8)  # tolerance = radius + 1.8 mm


def test_hit_within_radius_plus_voxel_and_miss_beyond() -> None:
    truth = [[0.0, 0.0, 0.0]]
    hit = match_detections([[0.0, 0.0, 2.7]], truth, [1.0], VOXEL)  # 2.7 <= 1 + 1.8
    miss = match_detections([[0.0, 0.0, 2.9]], truth, [1.0], VOXEL)
    assert hit.pairs.tolist() == [[0, 0]] and hit.distances_mm == pytest.approx([2.7])
    assert (miss.true_positives, miss.false_positives, miss.false_negatives) == (0, 1, 1)


def test_one_to_one_two_detections_on_one_lesion() -> None:
    match = match_detections([[0, 0, 0.5], [0, 0, 0.2]], [[0, 0, 0]], [1.5], VOXEL)
    assert match.pairs.tolist() == [[1, 0]]  # the closer one
    assert match.unmatched_detections.tolist() == [0]
    assert match.false_negatives == 0


def test_assignment_maximises_hits_before_distance() -> None:
    # Detection 0 is closest to lesion 0 but is the only one that can reach lesion 1; greedy
    # nearest matching would give one hit, the optimal one-to-one matching gives two.
    det = [[1.0, 0, 0], [-2.0, 0, 0]]
    truth = [[0.0, 0, 0], [3.5, 0, 0]]
    match = match_detections(det, truth, [1.0, 1.0], VOXEL)
    assert sorted(match.pairs.tolist()) == [[0, 1], [1, 0]]
    assert match.false_positives == 0 and match.false_negatives == 0


def test_empty_inputs() -> None:
    none_found = match_detections(np.zeros((0, 3)), [[0, 0, 0], [9, 9, 9]], [1, 1], VOXEL)
    assert none_found.false_negatives == 2 and none_found.pairs.shape == (0, 2)
    no_truth = match_detections([[0, 0, 0]], np.zeros((0, 3)), [], VOXEL)
    assert no_truth.false_positives == 1


def test_detection_metrics_pool_lesions_over_scans() -> None:
    scan1 = match_detections([[0, 0, 0], [20, 0, 0]], [[0, 0, 0], [40, 0, 0]], [1, 1], VOXEL)  # 1 TP 1 FP 1 FN
    scan2 = match_detections([[5, 5, 5]], [[5, 5, 5.5]], [1], VOXEL)  # 1 TP
    m = detection_metrics([scan1, scan2])
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (2, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["fp_per_scan"] == pytest.approx(0.5)
    assert math.isnan(detection_metrics([match_detections([], [], [], VOXEL)])["sensitivity"])


def test_froc_by_hand() -> None:
    # Scan A: lesions at 0 and 50; detections: hit lesion 0 (p .9), FP (p .8), hit lesion 50 (p .3).
    # Scan B: lesion at 0; detections: FP (p .7), hit (p .6), second hit on same lesion (p .95).
    probs = [[0.9, 0.8, 0.3], [0.7, 0.6, 0.95]]
    dets = [[[0, 0, 0], [20, 0, 0], [50, 0, 0]], [[30, 0, 0], [0, 0, 0.3], [0, 0, 0.5]]]
    truth = [[[0, 0, 0], [50, 0, 0]], [[0, 0, 0]]]
    radii = [[1, 1], [1]]
    curve = froc_curve(probs, dets, truth, radii, [VOXEL, VOXEL])
    # Thresholds among detections near lesions: .95 (1/3, 0 FP), .9 (2/3, 0), .6 (2/3; FPs .8 .7
    # and the duplicate .95 or .6 -> 3/2 per scan), .3 (3/3, 3/2).
    assert curve["threshold"].tolist()[1:] == [0.95, 0.9, 0.6, 0.3]
    assert curve["sensitivity"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    assert curve["fp_per_scan"].tolist() == pytest.approx([0, 0, 0, 1.5, 1.5])
    summary = froc(probs, dets, truth, radii, [VOXEL, VOXEL])
    assert summary == pytest.approx({0.5: 2 / 3, 1.0: 2 / 3, 2.0: 1.0, 4.0: 1.0})


def test_froc_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        froc_curve([[0.5]], [[[0, 0, 0]], [[1, 1, 1]]], [[], []], [[], []], [VOXEL, VOXEL])
