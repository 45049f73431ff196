"""Lesion matching, detection metrics, FROC and output evaluation on hand-made cases."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.errors import InputError
from cmbflow.evaluate import (_Scan, calibration, detection_metrics, evaluate_labels, evaluate_outputs, froc,
                              froc_curve, mask_lesions, match_detections, nucleus_false_calls, plot_froc)
from cmbflow.mars import ATLAS_NAME

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


def test_calibration_by_hand() -> None:
    # Bin 0.0-0.1: 4 at p .05, none bleeds (gap .05); bin 0.9-1.0: 4 at p .95, 2 bleeds (gap .45).
    fit = calibration([0.05] * 4 + [0.95] * 4, [0, 0, 0, 0, 1, 1, 0, 0])
    assert fit["ece"] == pytest.approx((4 * 0.05 + 4 * 0.45) / 8)
    assert fit["ece_above_0.1"] == pytest.approx(0.45)
    assert [b["candidates"] for b in fit["bins"]] == [4, 0, 0, 0, 0, 0, 0, 0, 0, 4]
    assert fit["bins"][9]["fraction_bleeds"] == 0.5 and math.isnan(fit["bins"][5]["mean_probability"])
    assert calibration([0.0, 1.0], [0, 1])["ece"] == 0.0


def test_false_calls_are_counted_at_the_nearest_iron_nucleus() -> None:
    calls = pd.DataFrame({"x": [5.0, -5.5, 20.0, 60.0], "y": [-20.0, -20.0, 0.0, 0.0], "z": [-9.0, -9.0, 0.0, 0.0]})
    truth = pd.DataFrame({"x": [20.0], "y": [0.0], "z": [0.0], "radius_mm": [1.5]})
    nuclei = tuple({"name": "red_nucleus", "side": side, "xyz": [x, -20.0, -9.0], "semi_axes_mm": [3, 3.5, 3.5]}
                   for side, x in (("R", 5.0), ("L", -5.0)))
    match = match_detections(calls[["x", "y", "z"]].to_numpy(), truth[["x", "y", "z"]].to_numpy(), [1.5], VOXEL)
    scan = _Scan("sub-1", truth, calls, calls, np.asarray(VOXEL), True, match, match, nuclei)
    # Both red nuclei called; the true bleed and the call far from any nucleus are not counted.
    assert nucleus_false_calls(scan) == {"red_nucleus": 2}


def test_froc_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        froc_curve([[0.5]], [[[0, 0, 0]], [[1, 1, 1]]], [[], []], [[], []], [VOXEL, VOXEL])


def _write_scan(root, sub, affine, truth, candidates, calls, has_phase):
    """A subject's truth TSV under root/truth and workflow outputs under root/out."""
    truth_anat = root / "truth" / sub / "anat"
    out_anat = root / "out" / sub / "anat"
    truth_anat.mkdir(parents=True)
    out_anat.mkdir(parents=True)
    truth = pd.DataFrame(truth, columns=["x", "y", "z", "kind", "diameter_mm", "region"])
    truth[["mni_x", "mni_y", "mni_z"]] = truth[["x", "y", "z"]]  # subject space = MNI space here
    truth.to_csv(truth_anat / f"{sub}_desc-truth_lesions.tsv", sep="\t", index=False)
    candidates = pd.DataFrame([row + [False] * (5 - len(row)) for row in candidates],
                              columns=["x", "y", "z", "probability", "superseded"])
    candidates.to_csv(out_anat / f"{sub}_desc-candidates_detections.tsv", sep="\t", index=False)
    pd.DataFrame(calls, columns=["x", "y", "z", "region"]).to_csv(
        out_anat / f"{sub}_desc-cmb_detections.tsv", sep="\t", index=False)
    grid = nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.uint8), affine)
    nib.save(grid, out_anat / f"{sub}_desc-brain_mask.nii.gz")
    if has_phase:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), affine),
                 out_anat / f"{sub}_part-phase_desc-hpphase_T2starw.nii.gz")


@pytest.fixture()
def two_scans(tmp_path):
    # sub-01 (phase; 0.9x0.9x1.8 mm, tolerance r + 1.8): bleeds at 0 and 50 (r 1), a calcification
    # at 20 that must not count; candidates hit 0 (p .9), the calcification (FP, p .8), 50 (p .3);
    # calls: only the hit on 0.
    _write_scan(tmp_path, "sub-01", np.diag([0.9, 0.9, 1.8, 1.0]),
                [[0, 0, 0, "cmb", 2, "lobar"], [50, 0, 0, "cmb", 2, "deep"], [20, 0, 0, "calcification", 3, "deep"]],
                [[0, 0, 0.5, 0.9], [20, 0, 0, 0.8], [50, 0, 1, 0.3]], [[0, 0, 0.5, "lobar"]], has_phase=True)
    # sub-02 (magnitude only; LPS 1 mm, tolerance r + 1): bleed at (10,10,10) r 2; candidates hit it
    # (p .6) and a FP (p .7); both are called. A third (p .5) on the same bleed is superseded by
    # the .6 one: it never enters the FROC (counted, it would add a point at 2 FP per scan).
    _write_scan(tmp_path, "sub-02", np.diag([-1.0, -1.0, 1.0, 1.0]),
                [[10, 10, 10, "cmb", 4, "lobar"]],
                [[10, 10, 11, 0.6], [30, 0, 0, 0.7], [10, 10, 13, 0.5, True]], [[10, 10, 11, "lobar"], [30, 0, 0, "deep"]], has_phase=False)
    return tmp_path


def test_evaluate_outputs_split_by_phase(two_scans) -> None:
    result = evaluate_outputs(two_scans / "truth", two_scans / "out")
    phase, magnitude = result["by_phase"]["phase"], result["by_phase"]["magnitude_only"]
    assert (phase["scans"], magnitude["scans"], result["scans"]) == (1, 1, 2)
    assert [phase["calls"][k] for k in ("true_positives", "false_positives", "false_negatives")] == [1, 0, 1]
    assert (magnitude["calls"]["sensitivity"], magnitude["calls"]["fp_per_scan"]) == (1.0, 1.0)
    assert result["calls"]["sensitivity"] == pytest.approx(2 / 3) and result["calls"]["fp_per_scan"] == 0.5
    assert phase["candidate_recall"] == magnitude["candidate_recall"] == result["candidate_recall"] == 1.0
    # Phase: .9 -> 1/2 at 0 FP, .3 -> 2/2 at 1 FP/scan. Magnitude: .6 keeps the .7 FP too.
    assert phase["froc_sensitivity_at_fp_per_scan"] == pytest.approx({"0.5": 0.5, "1.0": 1, "2.0": 1, "4.0": 1})
    assert magnitude["froc_sensitivity_at_fp_per_scan"] == pytest.approx({"0.5": 0, "1.0": 1, "2.0": 1, "4.0": 1})
    # Pooled: .9 -> 1/3 at 0; .6 -> 2/3 with FPs .8 and .7 (1 per scan); .3 -> 3/3 at 1.
    assert result["froc_sensitivity_at_fp_per_scan"] == pytest.approx({"0.5": 1 / 3, "1.0": 1, "2.0": 1, "4.0": 1})
    assert result["froc_curve"]["phase"] == [[0, 0, None], [0, 0.5, 0.9], [1, 1, 0.3]]
    assert result["froc_curve"]["magnitude_only"] == [[0, 0, None], [1, 1, 0.6]]
    assert result["froc_curve"]["all"] == [[0, 0, None], [0, 1 / 3, 0.9], [1, 2 / 3, 0.6], [1, 1, 0.3]]
    assert [s["phase"] for s in result["per_scan"]] == [True, False]
    assert result["per_region"]["lobar"] == {"lesions": 2, "sensitivity": 1.0}
    # Diameters 2 (found), 2 (missed) and 4 (found); no bleed under 2 mm or from 5 mm.
    assert result["per_diameter"] == {"2-3 mm": {"lesions": 2, "sensitivity": 0.5},
                                      "3-5 mm": {"lesions": 1, "sensitivity": 1.0}}
    assert json.loads(json.dumps(result))["by_phase"]["phase"]["scans"] == 1


def test_region_accuracy_against_the_atlas_at_the_true_position(two_scans) -> None:
    assert "region_accuracy" not in evaluate_outputs(two_scans / "truth", two_scans / "out")
    # Atlas: lobar frontal (1) for MNI x < 5, deep basal ganglia (6) from x = 5 on.
    labels = np.ones((80, 40, 40), np.uint8)
    labels[15:] = 6
    affine = np.eye(4)
    affine[:3, 3] = -10, -20, -20
    (two_scans / "out" / "atlas").mkdir()
    nib.save(nib.Nifti1Image(labels, affine), two_scans / "out" / "atlas" / ATLAS_NAME)
    located = evaluate_outputs(two_scans / "truth", two_scans / "out")["region_accuracy"]
    # sub-01: bleed at x 0 (lobar) called lobar; sub-02: bleed at x 10 (deep) called lobar.
    assert located == {"matched_calls": 2, "accuracy": 0.5, "confusion": {"lobar": {"lobar": 1}, "deep": {"lobar": 1}}}


def test_a_mirror_vetoed_candidate_never_enters_the_froc(two_scans) -> None:
    path = two_scans / "out" / "sub-02" / "anat" / "sub-02_desc-candidates_detections.tsv"
    candidates = pd.read_csv(path, sep="\t")
    candidates["mirror_vetoed"] = candidates["probability"] == 0.7  # the false positive, as at a nucleus
    candidates.to_csv(path, sep="\t", index=False)
    magnitude = evaluate_outputs(two_scans / "truth", two_scans / "out")["by_phase"]["magnitude_only"]
    assert magnitude["froc_sensitivity_at_fp_per_scan"] == pytest.approx({"0.5": 1, "1.0": 1, "2.0": 1, "4.0": 1})


def test_by_phase_leaves_out_an_empty_group(two_scans) -> None:
    (two_scans / "out" / "sub-01" / "anat" / "sub-01_part-phase_desc-hpphase_T2starw.nii.gz").unlink()
    result = evaluate_outputs(two_scans / "truth", two_scans / "out")
    assert list(result["by_phase"]) == ["magnitude_only"]
    assert result["by_phase"]["magnitude_only"]["calls"] == result["calls"]
    assert set(result["froc_curve"]) == {"all", "magnitude_only"}


def test_plot_froc_writes_png(tmp_path) -> None:
    path = tmp_path / "froc.png"
    curves = {"all": [[0, 0, None], [0.5, 0.6, 0.9], [2.0, 0.9, 0.2]], "none": []}
    plot_froc(curves, path, operating_points={"all": (0.5, 0.6)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cli_evaluate_writes_json_and_plot(two_scans, capsys) -> None:
    from cmbflow.cli import run_evaluate

    assert run_evaluate([str(two_scans / "truth"), str(two_scans / "out"),
                         "--json", str(two_scans / "e.json"), "--plot", str(two_scans / "froc.png")]) == 0
    printed = capsys.readouterr().out
    assert ("phase: 1 scans, 2 microbleeds: sensitivity 0.500, FP/scan 0.00, "
            "FROC at 0.5 FP 0.500, at 1 FP 1.000") in printed
    assert "magnitude-only: 1 scans, 1 microbleeds: sensitivity 1.000, FP/scan 1.00" in printed
    assert json.loads((two_scans / "e.json").read_text())["froc_curve"]["all"][0] == [0.0, 0.0, None]
    assert (two_scans / "froc.png").read_bytes()[:4] == b"\x89PNG"


def _write_points(path, rows, columns=("x", "y", "z", "radius_mm", "region")):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, sep="\t", index=False)


#: The simulated bleeds of the two_scans fixture as manual points (x y z radius_mm region).
POINTS = {"sub-01": [[0, 0, 0, 1.0, "lobar"], [50, 0, 0, 1.0, "deep"]], "sub-02": [[10, 10, 10, 2.0, "lobar"]]}


def test_points_tables_give_the_figures_of_the_simulated_truth(two_scans) -> None:
    for sub, rows in POINTS.items():
        _write_points(two_scans / "labels" / sub / f"{sub}_desc-cmb_points.tsv", rows)
    # Less the per-diameter figures: only the simulator knows every bleed's true diameter.
    expected = json.dumps({k: v for k, v in evaluate_outputs(two_scans / "truth", two_scans / "out").items()
                           if k != "per_diameter"})
    assert json.dumps(evaluate_labels(two_scans / "labels", two_scans / "out")) == expected
    # One table of the cohort says the same; a scan it does not list is left out, one with an empty row has none.
    cohort = two_scans / "points.tsv"
    _write_points(cohort, [[sub, *row] for sub, rows in POINTS.items() for row in rows],
                  ("participant_id", "x", "y", "z", "radius_mm", "region"))
    assert json.dumps(evaluate_labels(cohort, two_scans / "out")) == expected
    _write_points(cohort, [["sub-02", None, None, None]], ("participant_id", "x", "y", "z"))
    result = evaluate_labels(cohort, two_scans / "out")
    assert result["per_scan"] == [{"scan": "sub-02", "phase": False, "lesions": 0, "true_positives": 0,
                                   "false_positives": 2}]
    assert "per_region" not in result and result["calls"]["fp_per_scan"] == 2


def test_a_points_row_without_numbers_is_an_error(two_scans) -> None:
    _write_points(two_scans / "labels" / "sub-01" / "sub-01_desc-cmb_points.tsv", [[0, "left", 0]], ("x", "y", "z"))
    with pytest.raises(InputError, match=r"^sub-01: \S+: row 2: x y z must be numbers"):
        evaluate_labels(two_scans / "labels", two_scans / "out")


def _mask(path, voxels, affine):
    data = np.zeros((60, 10, 10), np.uint8)
    for ijk in voxels:
        data[ijk] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def test_lesion_masks_by_connected_component(two_scans) -> None:
    affine = np.eye(4)
    affine[:3, 3] = [-5.0, -5.0, -5.0]  # voxel (5, 5, 5) is world (0, 0, 0)
    cube = [(i, j, k) for i in (4, 5, 6) for j in (4, 5, 6) for k in (4, 5, 6)]  # 27 mm3 around (0, 0, 0)
    mask = two_scans / "labels" / "sub-01" / "anat" / "sub-01_space-T2S_CMB.nii.gz"  # VALDO's name
    _mask(mask, [*cube, (55, 5, 5)], affine)  # and one voxel at (50, 0, 0)
    lesions = mask_lesions(mask, "sub-01")
    assert lesions[["x", "y", "z"]].to_numpy().tolist() == [[0, 0, 0], [50, 0, 0]]
    assert lesions["radius_mm"].to_numpy() == pytest.approx(np.cbrt(3 * np.array([27, 1]) / (4 * np.pi)))
    # A session's mask is not the scan without session's: sub-02 has no labels and is left out.
    _mask(two_scans / "labels" / "sub-02" / "ses-1" / "sub-02_ses-1_desc-cmb_mask.nii.gz", cube, affine)
    result = evaluate_labels(two_scans / "labels", two_scans / "out")
    assert [s["scan"] for s in result["per_scan"]] == ["sub-01"]
    # The call at (0, 0, 0.5) hits the cube; the candidate at (50, 0, 1) is within 0.62 + 1.8 mm of the voxel.
    assert [result["calls"][k] for k in ("true_positives", "false_positives", "false_negatives")] == [1, 0, 1]
    assert result["candidate_recall"] == 1.0
    _write_points(two_scans / "labels" / "sub-01" / "sub-01_desc-cmb_points.tsv", POINTS["sub-01"])
    with pytest.raises(InputError, match="2 references for one scan"):
        evaluate_labels(two_scans / "labels", two_scans / "out")


def test_ratings_accepted_and_missed_are_the_bleeds_rejected_the_false_positives(two_scans) -> None:
    for sub in ("sub-01", "sub-02"):  # real calls tables have a radius
        calls = two_scans / "out" / sub / "anat" / f"{sub}_desc-cmb_detections.tsv"
        pd.read_csv(calls, sep="\t").assign(radius_mm=1.5).to_csv(calls, sep="\t", index=False)
    _write_points(two_scans / "labels" / "sub-02" / "sub-02_desc-cmb_ratings.tsv",
                  [[10, 10, 11, "accept"], [30, 0, 0, "reject"], [40, 40, 40, "missed"]], ("x", "y", "z", "rating"))
    # sub-01: its one call unsure (left out, and so is its candidate), a missed bleed at (50, 0, 0).
    _write_points(two_scans / "labels" / "sub-01" / "sub-01_desc-cmb_ratings.tsv",
                  [[0, 0, 0.5, "unsure"], [50, 0, 0, "missed"]], ("x", "y", "z", "rating"))
    result = evaluate_labels(two_scans / "labels", two_scans / "out")
    assert [(s["scan"], s["lesions"], s["true_positives"], s["false_positives"]) for s in result["per_scan"]] == [
        ("sub-01", 1, 0, 0), ("sub-02", 2, 1, 1)]
    assert result["calls"]["sensitivity"] == pytest.approx(1 / 3) and result["calls"]["precision"] == 0.5
    # Candidates: sub-01 (20, 0, 0) p .8 false, (50, 0, 1) p .3 hit; sub-02 (10, 10, 11) p .6 hit, (30, 0, 0) p .7
    # false; the missed bleed at (40, 40, 40) has none.
    assert result["candidate_recall"] == pytest.approx(2 / 3) and result["candidates_per_scan"] == 2.5
    assert result["froc_sensitivity_at_fp_per_scan"] == pytest.approx({"0.5": 0, "1.0": 2 / 3, "2.0": 2 / 3,
                                                                       "4.0": 2 / 3})


def test_cli_evaluate_labels(two_scans, capsys) -> None:
    from cmbflow.cli import run_evaluate

    for sub, rows in POINTS.items():
        _write_points(two_scans / "labels" / sub / f"{sub}_desc-cmb_points.tsv", [row[:3] for row in rows],
                      ("x", "y", "z"))
    assert run_evaluate(["--labels", str(two_scans / "labels"), str(two_scans / "out")]) == 0
    printed = capsys.readouterr().out
    assert "2 scans, 3 microbleeds: sensitivity 0.667" in printed and "per region" not in printed
    with pytest.raises(InputError, match="no subject has both manual labels and cmbflow outputs"):
        run_evaluate(["--labels", str(two_scans / "truth"), str(two_scans / "out")])
