"""QC report figures and pages on small synthetic images and tables."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.image import ijk_to_xyz
from cmbflow.report import figures
from cmbflow.report.pages import MANY_CALLS, qc_warnings, write_cohort_report, write_subject_report

CENTRE = np.array([4.0, -6.0, 10.0])
RAS = np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, -30.0], [0, 0, 0, -36], [0, 0, 0, -20], [0, 0, 0, 0]])
# Same field of view stored as P-S-L (permuted, flipped axes) with 1 x 1 x 2 mm voxels.
PSL = np.array([[0.0, 0.0, -1.0, 30.0], [-1.0, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 0.0, 1.0]])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scan(affine: np.ndarray, shape: tuple[int, int, int]) -> nib.Nifti1Image:
    """A ramp along world x, a dark 3 mm ball at CENTRE, zero outside a 25 mm 'head'."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk_to_xyz(affine, ijk).reshape(*shape, 3)
    head = np.linalg.norm(xyz, axis=-1) <= 25.0
    ball = np.linalg.norm(xyz - CENTRE, axis=-1) <= 3.0
    return nib.Nifti1Image(((100.0 + xyz[..., 0] - 80.0 * ball) * head).astype(np.float32), affine)


def test_world_plane_is_the_same_whatever_the_voxel_order():
    ras, psl = scan(RAS, (61, 73, 41)), scan(PSL, (61, 21, 61))
    bounds = [[-12.0, 12.0], [-12.0, 12.0]]
    a = figures.world_plane(ras.get_fdata(), ras.affine, "coronal", CENTRE[1], bounds, 1.0)
    b = figures.world_plane(psl.get_fdata(), psl.affine, "coronal", CENTRE[1], bounds, 1.0)
    assert a.shape == b.shape == (25, 25)
    # Rows run along world z and columns along world x: the ramp rises along a row, the ball is dark.
    assert np.nanmean(np.diff(a, axis=1)) == pytest.approx(1.0, abs=0.05)
    assert np.nanmean(np.abs(a - b)) < 3.0
    ball_row, ball_col = int(CENTRE[2] + 12), int(CENTRE[0] + 12)
    assert a[ball_row, ball_col] < 40 and b[ball_row, ball_col] < 40


def test_cuts_outside_the_image_are_nan():
    img = scan(RAS, (61, 73, 41))
    plane = figures.world_plane(img.get_fdata(), img.affine, "axial", 0.0, [[-100.0, 100.0], [0.0, 1.0]], 1.0)
    assert np.isnan(plane[0, 0]) and np.isfinite(plane[0, 100])


def test_figures_are_written_as_png(tmp_path):
    img = scan(PSL, (61, 21, 61))
    mask = nib.Nifti1Image((img.get_fdata() > 0).astype(np.uint8), img.affine)
    channels = [figures.Channel.windowed("magnitude", img, np.asarray(mask.dataobj) > 0)]
    calls = pd.DataFrame({"x": [CENTRE[0]], "y": [CENTRE[1]], "z": [CENTRE[2]], "probability": [0.97],
                          "region": ["lobar"]})
    for name, fig in {
        "mask": figures.mask_figure(img, mask),
        "montage": figures.montage_figure(calls, channels, "none"),
        "empty": figures.montage_figure(calls.iloc[:0], channels, "no microbleeds called"),
        "registration": figures.registration_figure(img),  # mostly outside MNI's field of view: still drawn
    }.items():
        figures.save_png(fig, tmp_path / f"{name}.png")
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    assert "region: lobar" in figures.detection_label(calls.iloc[0], 1)
    assert "region: n/a" in figures.detection_label(calls.drop(columns="region").iloc[0], 1)


def test_warnings_name_what_to_check_and_skip_unknown_metrics():
    assert qc_warnings({}) == []
    good = {"phase_used": True, "brain_volume_ml": 1200.0, "n_candidates": 900, "n_cmb": 2,
            "registration_similarity": 0.3, "voxel_size_x_mm": 0.9, "voxel_size_y_mm": 3.0, "voxel_size_z_mm": 1.0}
    assert qc_warnings(good) == []
    bad = good | {"phase_used": False, "brain_volume_ml": 500.0, "n_cmb": MANY_CALLS,
                  "registration_similarity": 0.05, "status": "failed", "error": "corrupt magnitude"}
    text = " ".join(qc_warnings(bad))
    for expected in ("no phase", "low brain volume", "many microbleeds", "poor registration", "corrupt magnitude"):
        assert expected in text
    # Coarser than the classifier's training scans, in any axis order: in-plane 1.5 mm, or 5 mm slices.
    for sizes in ((1.5, 1.5, 2.5), (2.5, 1.5, 1.5), (0.9, 0.9, 5.0)):
        coarse = good | dict(zip(("voxel_size_x_mm", "voxel_size_y_mm", "voxel_size_z_mm"), sizes))
        assert "coarser than the classifier was trained on" in " ".join(qc_warnings(coarse))


SUMMARY = pd.DataFrame({
    "participant_id": ["sub-01", "sub-02"], "session_id": [np.nan, np.nan], "n_cmb": [3, 0],
    "n_candidates": [800, 700], "phase_used": [True, False], "field_strength_t": [3.0, 1.5],
    "voxel_size_x_mm": [0.5, 1.0], "voxel_size_y_mm": [0.5, 1.0], "voxel_size_z_mm": [2.0, 3.0],
    "brain_volume_ml": [1200.0, 1100.0], "registration_similarity": [0.3, 0.28],
})


@pytest.mark.parametrize("with_regions", [False, True])
def test_cohort_page_with_and_without_region_columns(tmp_path, with_regions):
    calls = pd.DataFrame({"participant_id": ["sub-01"] * 3, "session_id": [np.nan] * 3, "x": [1.0, 2.0, 3.0]})
    if with_regions:
        calls = calls.assign(region=["lobar", "deep", "lobar"], lobe=["frontal", "n/a", "parietal"],
                             hemisphere=["L", "R", "L"])
    SUMMARY.to_csv(tmp_path / "summary.csv", index=False)
    calls.to_csv(tmp_path / "calls.csv", index=False)
    out = tmp_path / "group" / "cohort_report.html"
    write_cohort_report(tmp_path / "summary.csv", tmp_path / "calls.csv", out, tmp_path / "group" / "counts.png",
                        {"sub-01": str(tmp_path / "sub-01_report.html")})
    html = out.read_text()
    assert 'href="../sub-01_report.html"' in html and "data:image/png;base64," in html
    assert "no phase" in html  # sub-02 is flagged
    assert ("<th>region</th>" in html) == with_regions
    assert ("Regions: n/a" in html) != with_regions


def test_cohort_page_flags_failed_subjects_without_linking_them(tmp_path):
    SUMMARY.assign(status=["ok", "failed"], error=[np.nan, "corrupt magnitude"]).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"participant_id": ["sub-01"], "session_id": [np.nan], "x": [1.0]}).to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "group" / "cohort_report.html"
    reports = {s: str(tmp_path / f"{s}_report.html") for s in ("sub-01", "sub-02")}
    write_cohort_report(tmp_path / "s.csv", tmp_path / "c.csv", out, tmp_path / "group" / "counts.png", reports)
    html = out.read_text()
    assert "status failed: corrupt magnitude" in html
    assert 'href="../sub-01_report.html"' in html and 'href="../sub-02_report.html"' not in html


def test_cohort_page_counts_no_missed_bleed_as_a_call(tmp_path):
    SUMMARY.to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"participant_id": ["sub-01"] * 3, "session_id": np.nan, "x": [1.0, 2.0, 3.0],
                  "rating": ["accept", "missed", "missed"]}).to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "group" / "cohort_report.html"
    write_cohort_report(tmp_path / "s.csv", tmp_path / "c.csv", out, tmp_path / "group" / "counts.png", {})
    assert "Cohort: 1 microbleeds in 2 scans" in out.read_text()


def test_subject_page_and_its_qc_row(tmp_path):
    img = scan(RAS, (61, 73, 41))
    mask = nib.Nifti1Image((img.get_fdata() > 0).astype(np.uint8), img.affine)
    nib.save(img, tmp_path / "mag.nii.gz")
    nib.save(mask, tmp_path / "mask.nii.gz")
    (tmp_path / "mag.json").write_text(json.dumps({"EchoTime": 0.02, "MagneticFieldStrength": 3}))
    (tmp_path / "mask.json").write_text(json.dumps({"Method": "magnitude-based", "BrainVolume_ml": 60.0}))
    (tmp_path / "xfm.json").write_text(json.dumps({"RegistrationSimilarity": 0.31}))
    candidates = pd.DataFrame({"x": [CENTRE[0], 10.0], "y": [CENTRE[1], 5.0], "z": [CENTRE[2], -5.0],
                               "probability": [0.99, 0.3], "radius_mm": [3.0, 1.0], "is_cmb": [True, False],
                               "mni_x": [4.5, 11.0], "mni_y": [-6.5, 5.0], "mni_z": [10.5, -5.0],
                               "region": ["lobar", "deep"], "lobe": ["frontal", "n/a"], "hemisphere": ["left", "right"]})
    candidates.to_csv(tmp_path / "candidates.tsv", sep="\t", index=False)
    candidates[candidates["is_cmb"]].drop(columns="is_cmb").to_csv(tmp_path / "calls.tsv", sep="\t", index=False)
    (tmp_path / "candidates.json").write_text(json.dumps({"Classifier": "CandidateNet (magnitude model)"}))
    out = tmp_path / "sub-01_report.html"
    write_subject_report(
        tmp_path / "mag.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "mask.json", tmp_path / "xfm.json",
        tmp_path / "mag.nii.gz", tmp_path / "candidates.tsv", tmp_path / "candidates.json", tmp_path / "calls.tsv",
        None, None, {"magnitude": str(tmp_path / "mag.nii.gz"), "phase": None}, False, None,
        tmp_path / "metrics.json", out, *(tmp_path / f"{name}.png" for name in "abcd"),
        *(tmp_path / name for name in ("cmb_dseg.nii.gz", "cmb_dseg.tsv", "cmb_dseg.json", "cmb.mrk.json")),
        label="sub-01")
    assert np.asarray(nib.load(tmp_path / "cmb_dseg.nii.gz").dataobj).max() == 1  # one call (tests/test_viewer.py)
    row = json.loads((tmp_path / "metrics.json").read_text())
    assert row["n_cmb"] == 1 and row["n_candidates"] == 2 and row["n_lobar_frontal"] == 1 and row["n_left"] == 1
    assert row["echo_time_ms"] == 20.0 and row["registration_similarity"] == 0.31 and row["participant_id"] == "sub-01"
    html = out.read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "no phase image" in html and "low brain volume" in html
    assert "<td>frontal</td>" in html and "<th>n_lobar</th><td>1</td>" in html
