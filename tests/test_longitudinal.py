"""Longitudinal monitoring: tracks and statuses on hand-made tables, ARIA-H grades, scoring,
rigid registration of a synthetic head, and the simulator's follow-up sessions."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cmbflow.anat import register_sessions
from cmbflow.longitudinal import (
    Longitudinal,
    SUMMARY_COLUMNS,
    Session,
    aria_h_grade,
    in_field_of_view,
    longitudinal_summary,
    new_bleed_matches,
    points_from_baseline,
    points_to_baseline,
    score_new_bleeds,
    track_detections,
)
from cmbflow.simulate.geometry import rotation_xyz

VOXEL = (1.0, 1.0, 2.0)  # diagonal 2.45 mm: tolerance max(3, 3.67, r1 + r2) = 3.67 mm for small lesions


def rigid(degrees=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_xyz(degrees)
    matrix[:3, 3] = shift
    return matrix


def apply(matrix: np.ndarray, xyz) -> np.ndarray:
    return np.asarray(xyz, dtype=float).reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def session(label, lesions, motion=None, in_view=None, voxel=VOXEL) -> Session:
    """A session from baseline-space lesions ``(x, y, z, probability, radius_mm, is_cmb)``: its own
    world is ``motion`` applied to baseline space, and x_baseline is mapped back by its inverse."""
    motion = np.eye(4) if motion is None else motion
    table = pd.DataFrame(lesions, columns=["x", "y", "z", "probability", "radius_mm", "is_cmb"])
    base = table[["x", "y", "z"]].to_numpy(float)
    own = apply(motion, base)
    back = apply(np.linalg.inv(motion), own)  # what the registration's inverse gives
    table[["x", "y", "z"]] = own
    table[["x_baseline", "y_baseline", "z_baseline"]] = back
    table["region"], table["lobe"] = "lobar", "frontal"
    extra = {} if in_view is None else {"in_view": in_view}
    return Session(label, table, voxel, from_baseline=lambda p: apply(motion, p), **extra)


def call(x, y, z, p=0.9, r=1.5):
    return (x, y, z, p, r, True)


def candidate(x, y, z, p=0.3, r=1.5):
    return (x, y, z, p, r, False)


def rows(result: Longitudinal, label: str) -> pd.DataFrame:
    return result.detections[result.detections["session"] == label].set_index("track")


def test_shifted_followup_keeps_tracks_and_flags_a_new_call():
    base = session("ses-01", [call(10, 20, 30), call(-30, 0, 10)])
    follow = session("ses-02", [call(-30, 0, 10), call(10, 20, 30), call(40, -20, 0)], motion=rigid(shift=(6, -4, 3)))
    result = track_detections([follow, base])  # order of the list does not matter
    assert result.sessions == ["ses-01", "ses-02"]
    later = rows(result, "ses-02")
    assert later.loc[[1, 2], "status"].tolist() == ["persisting", "persisting"]
    assert later.loc[3, "status"] == "new" and later.loc[3, "new_since_baseline"]
    assert np.allclose(later.loc[1, ["x", "y", "z"]].to_numpy(float), [16, 16, 33])  # its own space
    assert np.allclose(later.loc[1, ["x_baseline", "y_baseline", "z_baseline"]].to_numpy(float), [10, 20, 30])
    assert (rows(result, "ses-01")["status"] == "baseline").all()


def test_rotation_matters_and_is_undone_by_mapping_back():
    """Lesions 70 mm from the centre of an 8-degree turn move ~10 mm: only mapped back do they match."""
    points = [call(70, 0, 0), call(0, 70, 0), call(0, 0, 70)]
    motion = rigid(degrees=(8, -5, 6), shift=(3, 2, -4))
    result = track_detections([session("ses-01", points), session("ses-02", points, motion=motion)])
    assert (rows(result, "ses-02")["status"] == "persisting").all()

    naive = session("ses-02", points, motion=motion)
    naive.detections[["x_baseline", "y_baseline", "z_baseline"]] = naive.detections[["x", "y", "z"]].to_numpy()
    unmapped = rows(track_detections([session("ses-01", points), naive]), "ses-02")
    assert (unmapped["status"] == "new").sum() == 3 and (unmapped["status"] == "not_seen").sum() == 3


def test_lesion_outside_the_field_of_view_is_not_seen_with_that_reason():
    motion = rigid(shift=(0, 0, 5))
    follow = session("ses-02", [call(0, 0, 0)], motion=motion, in_view=lambda p: p[:, 2] < 40)
    result = track_detections([session("ses-01", [call(0, 0, 0), call(0, 0, 50)]), follow])
    lost = rows(result, "ses-02").loc[2]
    assert (lost["status"], lost["reason"]) == ("not_seen", "outside_field_of_view")
    assert np.allclose(lost[["x", "y", "z"]].to_numpy(float), [0, 0, 55])  # where it would be in ses-02
    assert lost["region"] == "lobar" and np.isnan(lost["probability"])


def test_lesion_below_threshold_at_followup_gives_its_probability():
    follow = session("ses-02", [candidate(1, 0, 0, p=0.31), candidate(60, 0, 0, p=0.2)])
    result = track_detections([session("ses-01", [call(0, 0, 0), call(0, 40, 0)]), follow])
    later = rows(result, "ses-02")
    assert later.loc[1, "reason"] == "below_threshold" and later.loc[1, "probability"] == pytest.approx(0.31)
    assert later.loc[2, "reason"] == "not_detected" and np.isnan(later.loc[2, "probability"])
    assert len(later) == 2  # candidates are not rows


def test_followup_call_at_a_baseline_candidate_is_persisting_not_new():
    base = session("ses-01", [candidate(0, 0, 0, r=1.5), candidate(40, 0, 0, r=0.6)])
    follow = session("ses-02", [call(1, 1, 0, r=2.0), call(40, 1, 0, r=2.5)])  # the second grew 4x: new
    result = track_detections([base, follow])
    later = rows(result, "ses-02")
    assert later["status"].tolist() == ["persisting", "new"]
    assert later["new_since_baseline"].tolist() == [False, True]
    summary = longitudinal_summary(result, "sub-01", {"ses-02": 0.7}).set_index("session")
    assert summary.loc["ses-02", "n_new"] == 1 and summary.loc["ses-02", "n_persisting"] == 1
    assert summary.loc["ses-01", "n_cmb"] == 0


def test_followup_call_at_a_faint_baseline_candidate_is_new():
    """Stage 1's faint candidates are everywhere: one the classifier all but dismissed is not the lesion."""
    base = session("ses-01", [candidate(0, 0, 0, p=0.01), candidate(40, 0, 0, p=0.1)])
    follow = session("ses-02", [call(1, 0, 0), call(41, 0, 0)])
    assert rows(track_detections([base, follow]), "ses-02")["status"].tolist() == ["new", "persisting"]


def test_tolerance_follows_voxel_size_and_radii():
    base = [call(0, 0, 0, r=1.0)]
    assert rows(track_detections([session("ses-01", base), session("ses-02", [call(3.5, 0, 0, r=1.0)])]),
                "ses-02")["status"].tolist() == ["persisting"]  # 1.5 voxel diagonals = 3.67 mm
    assert rows(track_detections([session("ses-01", base), session("ses-02", [call(4.0, 0, 0, r=1.0)])]),
                "ses-02")["status"].tolist() == ["not_seen", "new"]  # sorted by track
    bloomed = [call(4.5, 0, 0, r=3.6)]  # radii sum 4.6 mm
    assert rows(track_detections([session("ses-01", base), session("ses-02", bloomed)]),
                "ses-02")["status"].tolist() == ["persisting"]


def test_two_followups_count_new_since_baseline_and_since_previous():
    base = session("ses-01", [call(0, 0, 0)])
    second = session("ses-02", [call(0, 0, 0), call(40, 0, 0), call(0, 40, 0)], motion=rigid((0, 0, 4), (2, 0, 0)))
    third = session("ses-03", [call(0, 0, 0), call(40, 0, 0), call(0, 40, 0), call(0, -40, 0)],
                    motion=rigid((3, 0, 0), (0, -3, 1)))
    result = track_detections([third, base, second])
    assert result.sessions == ["ses-01", "ses-02", "ses-03"]
    assert rows(result, "ses-03")["status"].tolist() == ["persisting", "persisting", "persisting", "new"]
    summary = longitudinal_summary(result, "sub-01", {"ses-02": 0.8, "ses-03": 0.75}).set_index("session")
    assert summary.loc["ses-02", ["n_new", "n_new_since_previous", "aria_h_grade"]].tolist() == [2, 2, "mild"]
    assert summary.loc["ses-03", ["n_cmb", "n_new", "n_new_since_previous", "n_persisting", "n_not_seen"]].tolist() \
        == [4, 3, 1, 3, 0]
    assert summary.loc["ses-03", "registration_similarity"] == 0.75
    assert pd.isna(summary.loc["ses-01", "n_new"]) and summary.loc["ses-01", "baseline_session"] == "ses-01"


def test_a_named_baseline_is_the_reference():
    early = session("ses-01", [call(0, 0, 0)])
    late = session("ses-02", [call(0, 0, 0), call(40, 0, 0)])
    result = track_detections([early, late], baseline="ses-02")
    assert result.sessions == ["ses-02", "ses-01"]
    assert rows(result, "ses-01").loc[2, ["status", "reason"]].tolist() == ["not_seen", "not_detected"]
    with pytest.raises(ValueError, match="ses-09"):
        track_detections([early, late], baseline="ses-09")


@pytest.mark.parametrize("n_new, grade", [(0, "none"), (1, "mild"), (4, "mild"), (5, "moderate"), (9, "moderate"),
                                          (10, "severe"), (31, "severe")])
def test_aria_h_grade_thresholds(n_new, grade):
    assert aria_h_grade(n_new) == grade


def test_new_bleed_scoring_against_truth():
    base = session("ses-01", [call(0, 0, 0)])
    follow = session("ses-02", [call(0, 0, 0), call(40, 0, 0), call(0, 40, 0)])  # one true new, one false
    result = track_detections([base, follow])
    truth_columns = ["x", "y", "z", "kind", "diameter_mm", "track", "session_introduced"]
    truth = {
        "ses-01": pd.DataFrame([(0, 0, 0, "cmb", 3.0, 1, "ses-01")], columns=truth_columns),
        "ses-02": pd.DataFrame([(0, 0, 0, "cmb", 3.0, 1, "ses-01"), (40, 0, 1, "cmb", 3.0, 2, "ses-02"),
                                (0, 0, 60, "cmb", 3.0, 3, "ses-02")], columns=truth_columns),
    }
    per = new_bleed_matches(result, truth, {"ses-02": VOXEL})
    assert per == [{"session": "ses-02", "n_true_new": 2, "n_called_new": 2, "true_positives": 1, "false_new": 1,
                    "true_grade": "mild", "grade": "mild"}]
    assert score_new_bleeds(per) == {"followups": 1, "true_new": 2, "sensitivity": 0.5,
                                     "false_new_per_followup": 1.0, "grade_agreement": 1.0}


# --------------------------------------------------------------------------- registration


def synthetic_head(seed: int = 3) -> nib.Nifti1Image:
    """A smoothed random texture inside an ellipsoid, 64^3 at 3 mm, on an LPS-ordered grid."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal((64, 64, 64)), 2.5)
    ijk = np.indices((64, 64, 64)).astype(float) - 31.5
    inside = ((ijk[0] / 24) ** 2 + (ijk[1] / 27) ** 2 + (ijk[2] / 22) ** 2) <= 1
    data = np.where(inside, 100 + 400 * (texture - texture.min()) / np.ptp(texture), 0).astype(np.float32)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    affine[:3, 3] = [94.5, 94.5, -94.5]
    return nib.Nifti1Image(data, affine)


def test_rigid_registration_recovers_a_known_motion(tmp_path):
    base = synthetic_head()
    motion = rigid(degrees=(5, 0, 0), shift=(0, 4, 0))  # follow-up world = motion(baseline world)
    index_map = np.linalg.inv(base.affine) @ np.linalg.inv(motion) @ base.affine
    moved = ndimage.affine_transform(np.asarray(base.dataobj), index_map, order=1)
    follow = nib.Nifti1Image(moved.astype(np.float32), base.affine)
    base_mask, follow_mask = np.asarray(base.dataobj) > 0, moved > 50

    result = register_sessions(base, base_mask, follow, follow_mask, tmp_path / "ses-02_from-baseline_")
    assert result.transforms.affine == tmp_path / "ses-02_from-baseline_affine.mat"
    assert 0.3 < result.similarity <= 1.0
    points = np.array([[0.0, 0.0, 0.0], [40.0, -30.0, 20.0], [-50.0, 20.0, -30.0]])
    in_followup = apply(motion, points)
    assert np.abs(points_to_baseline(in_followup, result.transforms) - points).max() < 1.0
    assert np.abs(points_from_baseline(points, result.transforms) - in_followup).max() < 1.0

    mask = nib.Nifti1Image(follow_mask.astype(np.uint8), base.affine)
    inside = in_field_of_view(np.vstack([in_followup, [[0.0, 0.0, 150.0], [0.0, 0.0, 80.0]]]), mask)
    assert inside.tolist() == [True, True, True, False, False]  # off the grid; on it but far from the brain

    again = register_sessions(base, base_mask, follow, follow_mask, tmp_path / "again_")
    assert again.transforms.affine.read_bytes() == result.transforms.affine.read_bytes()


# --------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def followups(tmp_path_factory):
    from cmbflow.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("followups")
    assert simulate_cohort(root, 2, seed=11, preset="tiny", sessions=2) == ["sub-001", "sub-002"]
    return root


def truth_of(root, subject, session):
    folder = root / "derivatives" / "simulation" / subject / f"ses-{session}" / "anat"
    lesions = pd.read_csv(folder / f"{subject}_ses-{session}_desc-truth_lesions.tsv", sep="\t")
    params = json.loads((folder / f"{subject}_ses-{session}_desc-truth_params.json").read_text())
    return lesions, params


@pytest.mark.slow
def test_simulated_followups_image_the_same_lesions_moved(followups):
    for subject, grade in (("sub-001", "none"), ("sub-002", "mild")):
        for session in ("01", "02"):
            anat = followups / subject / f"ses-{session}" / "anat"
            assert (anat / f"{subject}_ses-{session}_part-mag_T2starw.nii.gz").exists()
            assert (anat / f"{subject}_ses-{session}_part-phase_T2starw.nii.gz").exists()
        base, _ = truth_of(followups, subject, "01")
        later, params = truth_of(followups, subject, "02")
        assert base["track"].tolist() == list(range(1, len(base) + 1))
        assert (base["session_introduced"] == "ses-01").all()
        kept = later.set_index("track").loc[base["track"]]
        assert np.allclose(kept[["mni_x", "mni_y", "mni_z", "diameter_mm"]].to_numpy(),
                           base[["mni_x", "mni_y", "mni_z", "diameter_mm"]].to_numpy(), atol=1e-3)
        new = later[later["session_introduced"] == "ses-02"]
        assert new["track"].tolist() == list(range(len(base) + 1, len(later) + 1)) and (new["kind"] == "cmb").all()
        assert aria_h_grade(len(new)) == grade

        motion = params["motion_from_baseline"]
        assert 0 < motion["rotation_deg"] <= 8 and motion["head_centre_shift_mm"] <= 8
        moved = apply(np.asarray(motion["world_from_baseline_world"]), base[["x", "y", "z"]].to_numpy())
        assert np.allclose(moved, kept[["x", "y", "z"]].to_numpy(), atol=2e-3)  # truth is rounded to 4 decimals
        assert np.abs(moved - base[["x", "y", "z"]].to_numpy()).max() > 0.5


@pytest.mark.slow
def test_simulated_followups_are_deterministic_and_keep_the_baseline(followups, tmp_path):
    from cmbflow.simulate import simulate_cohort

    simulate_cohort(tmp_path / "again", 1, seed=11, preset="tiny", sessions=2)
    simulate_cohort(tmp_path / "single", 1, seed=11, preset="tiny", sessions=True)
    for path in (tmp_path / "again").rglob("sub-001_*"):
        assert path.read_bytes() == (followups / path.relative_to(tmp_path / "again")).read_bytes(), path
    for path in (tmp_path / "single").rglob("sub-001_*.nii.gz"):  # same baseline images as a one-session cohort
        assert path.read_bytes() == (followups / path.relative_to(tmp_path / "single")).read_bytes(), path


@pytest.mark.parametrize("argv, sessions", [([], 0), (["--sessions"], 1), (["--sessions", "3"], 3)])
def test_simulate_command_takes_a_number_of_sessions(monkeypatch, tmp_path, argv, sessions):
    import cmbflow.simulate
    from cmbflow.cli import run_simulate

    seen = {}
    monkeypatch.setattr(cmbflow.simulate, "simulate_cohort", lambda out, n, seed, preset, sessions: seen.update(
        sessions=sessions) or ["sub-001"])
    assert run_simulate([str(tmp_path), "--preset", "tiny"] + argv) == 0
    assert seen["sessions"] == sessions


def test_empty_followup_and_written_table(tmp_path):
    from cmbflow.detections import read_detections
    from cmbflow.longitudinal import LONGITUDINAL_COLUMNS, write_longitudinal_detections

    result = track_detections([session("ses-01", [call(0, 0, 0)]), session("ses-02", [])])
    assert rows(result, "ses-02")[["status", "reason"]].values.tolist() == [["not_seen", "not_detected"]]
    write_longitudinal_detections(result, tmp_path / "long.tsv", tmp_path / "long.json", Sources=["x"])
    back = read_detections(tmp_path / "long.tsv")
    assert list(back.columns) == list(LONGITUDINAL_COLUMNS)
    assert back["reason"].isna().tolist() == [True, False] and back.loc[1, "reason"] == "not_detected"
    sidecar = json.loads((tmp_path / "long.json").read_text())
    assert sidecar["BaselineSession"] == "ses-01" and sidecar["Sources"] == ["x"] and "status" in sidecar


def test_written_tables_give_the_cohort_rows_and_the_evaluation(tmp_path):
    from cmbflow.cohort import write_longitudinal_table
    from cmbflow.longitudinal import evaluate_longitudinal, write_longitudinal_detections

    base = session("ses-01", [call(0, 0, 0)])
    follow = session("ses-02", [call(0, 0, 0), call(40, 0, 0), call(0, 40, 0)])
    out, truth_dir = tmp_path / "out", tmp_path / "truth"
    table = out / "sub-001" / "anat" / "sub-001_desc-longitudinal_detections.tsv"
    table.parent.mkdir(parents=True)
    write_longitudinal_detections(track_detections([base, follow]), table, table.with_suffix(".json"),
                                  RegistrationSimilarity={"ses-02": 0.61})
    write_longitudinal_table([table], tmp_path / "cohort.csv", tmp_path / "cohort.json")
    cohort = pd.read_csv(tmp_path / "cohort.csv", dtype={"session": str})
    assert cohort.to_dict("records") == [{
        "participant_id": "sub-001", "baseline_session": "ses-01", "session": "ses-02", "n_cmb": 3, "n_new": 2,
        "n_new_since_previous": 2, "n_persisting": 1, "n_not_seen": 0, "aria_h_grade": "mild",
        "registration_similarity": 0.61, "status": "ok"}]

    grid = out / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_part-mag_desc-n4_T2starw.nii.gz"
    grid.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([*VOXEL, 1.0])), grid)
    truth = truth_dir / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_desc-truth_lesions.tsv"
    truth.parent.mkdir(parents=True)
    pd.DataFrame([(0, 0, 0, "cmb", 3.0, "ses-01"), (40, 0, 1, "cmb", 3.0, "ses-02")],
                 columns=["x", "y", "z", "kind", "diameter_mm", "session_introduced"]).to_csv(truth, sep="\t", index=False)
    scored = evaluate_longitudinal(truth_dir, out)
    assert {k: scored[k] for k in ("followups", "true_new", "sensitivity", "false_new_per_followup")} == {
        "followups": 1, "true_new": 1, "sensitivity": 1.0, "false_new_per_followup": 1.0}
    assert evaluate_longitudinal(truth_dir, tmp_path / "none") is None


def test_a_failed_session_leaves_the_other_rows_with_a_status(tmp_path):
    from cmbflow.cohort import write_partial_longitudinal_table
    from cmbflow.longitudinal import write_longitudinal_detections

    out, logs = tmp_path / "out", tmp_path / "out" / "logs"
    # sub-001 tracked; sub-002's ses-02 failed (its ses-03 finished); sub-003's baseline failed.
    tracked = out / "sub-001" / "anat" / "sub-001_desc-longitudinal_detections.tsv"
    tracked.parent.mkdir(parents=True)
    write_longitudinal_detections(track_detections([session("ses-01", [call(0, 0, 0)]),
                                                    session("ses-02", [call(0, 0, 0)])]),
                                  tracked, tracked.with_suffix(".json"), RegistrationSimilarity={"ses-02": 0.5})
    subjects = {"sub-001": (tracked, {s: out / f"sub-001_{s}.json" for s in ("ses-01", "ses-02")})}
    for subject, failed in (("sub-002", "ses-02"), ("sub-003", "ses-01")):
        summaries = {s: out / f"{subject}_{s}.json" for s in ("ses-01", "ses-02", "ses-03")}
        for label, path in summaries.items():
            if label == failed:
                log = logs / "anatomy" / f"{subject}_{label}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(f"t t ERROR root: {subject}_{label}: /b/mag.nii.gz: file is empty; re-copy it\n")
            else:
                path.write_text(json.dumps({"n_cmb": 2}))
        subjects[subject] = (out / subject / "none.tsv", summaries)

    assert write_partial_longitudinal_table(subjects, None, logs, tmp_path / "partial.csv") == 4
    table = pd.read_csv(tmp_path / "partial.csv", dtype={"session": str})
    assert list(table.columns) == [*SUMMARY_COLUMNS, "status"]
    status = {(r.participant_id, r.session): (r.n_cmb, r.status) for r in table.itertuples()}
    error = "failed in anatomy: {}: /b/mag.nii.gz: file is empty; re-copy it"
    assert status.pop(("sub-001", "ses-02")) == (1, "ok")
    assert status.pop(("sub-002", "ses-02"))[1] == error.format("sub-002_ses-02")
    assert status.pop(("sub-002", "ses-03")) == (2, "not tracked: ses-02 has no results")
    for later in ("ses-02", "ses-03"):
        assert status.pop(("sub-003", later)) == (2, "not tracked: baseline ses-01 " + error.format("sub-003_ses-01"))
    assert not status
    assert (tmp_path / "partial.json").exists()


def test_subject_page_over_sessions(tmp_path):
    from cmbflow.report.pages import write_longitudinal_report

    tracked = track_detections([session("ses-01", [call(0, 0, 0)]),
                                session("ses-02", [call(0, 0, 0), call(20, 0, 0)], motion=rigid(shift=(2, 0, 0)))])
    head = synthetic_head()
    mask = nib.Nifti1Image((np.asarray(head.dataobj) > 0).astype(np.uint8), head.affine)
    for name, img in (("mag", head), ("mask", mask)):
        nib.save(img, tmp_path / f"{name}.nii.gz")
    files = {s: tmp_path / "mag.nii.gz" for s in ("ses-01", "ses-02")}
    masks = {s: tmp_path / "mask.nii.gz" for s in ("ses-01", "ses-02")}
    write_longitudinal_report(tracked, files, masks, {"ses-02": 0.5}, tmp_path / "page.html", "sub-001")
    page = (tmp_path / "page.html").read_text()
    assert "ses-02: ARIA-H grade mild" in page and "research use" in page
    assert page.count("data:image/png;base64,") == 1  # the one new call, beside its place at baseline
