"""QC report figures and pages on small synthetic images and tables."""

from __future__ import annotations

import io
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from browser import browse, chromium  # noqa: F401 - chromium is a fixture
from PIL import Image

from cmbflow.cohort import write_cohort_tables
from cmbflow.detections import read_detections
from cmbflow.image import ijk_to_xyz
from cmbflow.ratings import rate_subject, ratings_files, ratings_table_path
from cmbflow.report import figures
from cmbflow.report.pages import MANY_CALLS, qc_warnings, why_not_called, write_cohort_report, write_subject_report

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
            "registration_similarity": 0.1, "registration_alignment": 2.2, "voxel_size_x_mm": 0.9, "voxel_size_y_mm": 3.0, "voxel_size_z_mm": 1.0,
            "echo_time_ms": 40.0, "field_strength_t": 1.5}
    assert qc_warnings(good) == []
    bad = good | {"phase_used": False, "brain_volume_ml": 500.0, "n_cmb": MANY_CALLS,
                  "registration_alignment": 1.5, "status": "failed", "error": "corrupt magnitude"}
    text = " ".join(qc_warnings(bad))
    for expected in ("no phase", "low brain volume", "many microbleeds", "poor registration", "corrupt magnitude"):
        assert expected in text
    # Coarser than the classifier's training scans, in any axis order: in-plane 1.5 mm, or 5 mm slices.
    for sizes in ((1.5, 1.5, 2.5), (2.5, 1.5, 1.5), (0.9, 0.9, 5.0)):
        coarse = good | dict(zip(("voxel_size_x_mm", "voxel_size_y_mm", "voxel_size_z_mm"), sizes))
        assert "coarser than the classifier was trained on" in " ".join(qc_warnings(coarse))
    # Echo times and field strengths beyond the training's.
    assert "echo time 45 ms outside" in " ".join(qc_warnings(good | {"echo_time_ms": 45.0}))
    assert "echo time 10 ms outside" in " ".join(qc_warnings(good | {"echo_time_ms": 10.0}))
    assert "field strength 7 T outside" in " ".join(qc_warnings(good | {"field_strength_t": 7.0}))


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


#: Three calls (rows 1-3 of the calls table) and one rejected candidate, inside the 25 mm head.
CANDIDATES = pd.DataFrame({
    "x": [CENTRE[0], -10.0, 12.0, 10.0], "y": [CENTRE[1], 5.0, 8.0, 5.0], "z": [CENTRE[2], 0.0, -6.0, -5.0],
    "probability": [0.99, 0.6, 0.95, 0.3], "probability_sd": [0.01, 0.2, 0.04, 0.1], "radius_mm": [3.0, 1.0, 1.5, 1.0],
    "is_cmb": [True, True, True, False], "mni_x": [4.5, -10.0, 12.0, 11.0], "mni_y": [-6.5, 5.0, 8.0, 5.0],
    "mni_z": [10.5, 0.0, -6.0, -5.0], "region": ["lobar", "deep", "deep", "deep"],
    "lobe": ["frontal", "thalamus", "n/a", "n/a"], "hemisphere": ["left", "left", "right", "right"],
    "mimic_diamagnetic": [False, True, None, False], "mimic_vessel": [False, False, True, False],
})


def subject_page(tmp_path, label="sub-01"):
    """A subject's page (and QC row, viewer files, figures) from a synthetic scan and CANDIDATES."""
    img = scan(RAS, (61, 73, 41))
    mask = nib.Nifti1Image((img.get_fdata() > 0).astype(np.uint8), img.affine)
    nib.save(img, tmp_path / "mag.nii.gz")
    nib.save(mask, tmp_path / "mask.nii.gz")
    (tmp_path / "mag.json").write_text(json.dumps({"EchoTime": 0.02, "MagneticFieldStrength": 3}))
    (tmp_path / "mask.json").write_text(json.dumps({"Method": "magnitude-based", "BrainVolume_ml": 60.0}))
    (tmp_path / "xfm.json").write_text(json.dumps({"RegistrationSimilarity": 0.31}))
    CANDIDATES.to_csv(tmp_path / "candidates.tsv", sep="\t", index=False, na_rep="n/a")
    calls = CANDIDATES[CANDIDATES["is_cmb"]].drop(columns=["is_cmb", "mimic_diamagnetic", "mimic_vessel"])
    calls.to_csv(tmp_path / "calls.tsv", sep="\t", index=False, float_format="%.4f")
    (tmp_path / "candidates.json").write_text(json.dumps({"Classifier": "CandidateNet (magnitude model)"}))
    out = tmp_path / f"{label}_report.html"
    write_subject_report(
        tmp_path / "mag.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "mask.json", tmp_path / "xfm.json",
        tmp_path / "mag.nii.gz", tmp_path / "candidates.tsv", tmp_path / "candidates.json", tmp_path / "calls.tsv",
        None, None, {"magnitude": str(tmp_path / "mag.nii.gz"), "phase": None}, False, None,
        tmp_path / "metrics.json", out, *(tmp_path / f"{name}.png" for name in "abcd"),
        *(tmp_path / name for name in ("cmb_dseg.nii.gz", "cmb_dseg.tsv", "cmb_dseg.json", "cmb.mrk.json")),
        label=label)
    return out


def test_subject_page_and_its_qc_row(tmp_path):
    html = subject_page(tmp_path).read_text()
    assert np.asarray(nib.load(tmp_path / "cmb_dseg.nii.gz").dataobj).max() == 3  # three calls (tests/test_viewer.py)
    row = json.loads((tmp_path / "metrics.json").read_text())
    assert row["n_cmb"] == 3 and row["n_candidates"] == 4 and row["n_lobar_frontal"] == 1 and row["n_left"] == 2
    assert row["echo_time_ms"] == 20.0 and row["registration_similarity"] == 0.31 and row["participant_id"] == "sub-01"
    # mask, registration, rejected candidates and one figure per call (the calls' montage is a file only)
    assert html.count("data:image/png;base64,") == 3 + 3
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "no phase image" in html and "low brain volume" in html
    assert "<td>frontal</td>" in html and "<th>n_lobar</th><td>1</td>" in html
    # Calls most probable first, numbered by their row of the calls table, with uncertainty and mimic flags.
    assert re.findall(r'data-number="(\d)"', html) == ["1", "3", "2"]
    assert 'data-x="-10.0000" data-y="5.0000"' in " ".join(html.split())
    assert "probability 0.6 (sd 0.2)" in html and "diamagnetic yes, vessel\nno" in html
    assert "diamagnetic n/a, vessel\nyes" in html
    assert 'download="sub-01_desc-cmb_ratings.tsv"' in html and "RATINGS_DIR/sub-01/sub-01_desc-cmb_ratings.tsv" in html
    assert "<th>not_called</th>" in html and "<td>below threshold</td>" in html


def test_a_rejected_candidate_says_why_it_is_not_a_call():
    candidates = pd.DataFrame({"probability": [0.9, 0.8, 0.2, 0.1], "superseded": [True, False, False, False],
                               "mirror_vetoed": [True, True, True, False]})
    assert why_not_called(candidates, 0.5) == ["superseded", "mirror veto", "below threshold", "below threshold"]
    assert why_not_called(candidates[["probability"]], 0.5) == ["below threshold"] * 4  # outputs before the veto


def test_ratings_table_path_follows_the_contract():
    assert ratings_table_path("sub-01").as_posix() == "sub-01/sub-01_desc-cmb_ratings.tsv"
    assert ratings_table_path("sub-01_ses-1").as_posix() == "sub-01/ses-1/sub-01_ses-1_desc-cmb_ratings.tsv"


def test_call_figure_is_large_and_small(tmp_path):
    img = scan(RAS, (61, 73, 41))
    inside = img.get_fdata() > 0
    magnitude = figures.Channel.windowed("magnitude", img, inside)
    phase = figures.Channel.windowed("high-pass phase", img, inside, symmetric=True)
    row = pd.Series({"x": CENTRE[0], "y": CENTRE[1], "z": CENTRE[2]})
    png = figures.png_bytes(figures.call_figure(row, [magnitude, magnitude, phase], magnitude))
    width, height = Image.open(io.BytesIO(png)).size
    assert width >= 8 * 140 and height >= 140  # 8 panels (context, minIP, 3 x 2 zooms) of about 150 px
    assert len(png) < 60_000


def test_minip_takes_the_darkest_value_across_the_slab():
    volume = np.full((21, 21, 21), 100.0)
    volume[10, 10, 13] = 0.0  # 3 mm above the cut: in an 8 mm slab, not in the cut itself
    bounds = [[-2.0, 2.0], [-2.0, 2.0]]
    affine = np.eye(4)
    affine[:3, 3] = -10
    assert figures.world_plane(volume, affine, "axial", 0.0, bounds, 1.0).min() == 100
    minip = figures.world_minip(volume, affine, "axial", 0.0, bounds, 1.0, slab_mm=8.0)
    assert minip[2, 2] == 0 and minip[0, 0] == 100
    assert np.isnan(figures.world_minip(volume, affine, "axial", 30.0, bounds, 1.0)).all()


#: Clicks on the page as a rater would, then downloads the ratings and writes them into the DOM.
RATE_AND_EXPORT = """<script>
window.addEventListener("load", function () {
  function rate(number, rating) {
    document.querySelector('.call[data-number="' + number + '"] button[data-rating="' + rating + '"]').click();
  }
  rate(1, "accept"); rate(2, "reject"); rate(3, "unsure"); rate(3, "unsure");  // the second click undoes
  var form = document.getElementById("missed-form");
  function add(x, y, z) {
    form.elements.x.value = x; form.elements.y.value = y; form.elements.z.value = z;
    form.querySelector("button[type=submit]").click();
  }
  add("-10.5", "5", "0");  // 0.5 mm from call 2: refused
  var refused = document.getElementById("missed-error").textContent;
  add("-20.5", "-3", "7.25");
  var link = document.getElementById("export");
  link.addEventListener("click", function (event) { event.preventDefault(); });  // no download in the test
  link.click();
  fetch(link.href).then(function (response) { return response.text(); }).then(function (text) {
    var out = document.createElement("pre");
    out.id = "exported";
    out.dataset.file = link.getAttribute("download");
    out.dataset.refused = refused;
    out.textContent = text;
    document.body.appendChild(out);
  });
});
</script>
</body>"""

#: Reads back what the page shows after a reload (local storage).
READ_BACK = """<script>
window.addEventListener("load", function () {
  var out = document.createElement("pre");
  out.id = "kept";
  out.textContent = document.getElementById("rating-count").textContent;
  document.body.appendChild(out);
});
</script>
</body>"""


def test_rating_in_the_page_gives_a_ratings_table_the_cohort_counts(tmp_path, chromium):
    page = subject_page(tmp_path)
    html = page.read_text()
    rater = tmp_path / "rater.html"  # the page as a rater's browser runs it, with the clicks
    rater.write_text(html.replace("</body>", RATE_AND_EXPORT))
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = browse(chromium, rater, "--dump-dom", profile)
    exported = re.search(r'<pre id="exported" data-file="([^"]+)" data-refused="([^"]*)">([^<]*)</pre>', dom)
    assert exported, dom[-2000:]
    name, refused, text = exported.groups()
    assert name == "sub-01_desc-cmb_ratings.tsv" and refused == "within 1 mm of cmb-2: rate that call instead"
    assert text == ("x\ty\tz\trating\n4.0000\t-6.0000\t10.0000\taccept\n-10.0000\t5.0000\t0.0000\treject\n"
                    "-20.5\t-3\t7.25\tmissed\n")
    ratings = tmp_path / "ratings"
    (ratings / "sub-01").mkdir(parents=True)
    (ratings / ratings_table_path("sub-01")).write_text(text)
    calls = read_detections(tmp_path / "calls.tsv")
    rated = rate_subject(calls, ratings_files(ratings, "sub-01"), "sub-01")
    assert rated.ratings == ["accept", "reject", None]
    assert rated.missed[["x", "y", "z"]].to_numpy().tolist() == [[-20.5, -3.0, 7.25]]
    write_cohort_tables([tmp_path / "metrics.json"], [tmp_path / "calls.tsv"], tmp_path / "s.csv",
                        tmp_path / "d.csv", ratings_dir=ratings)
    summary = pd.read_csv(tmp_path / "s.csv")
    assert summary[["n_cmb", "n_cmb_rated", "n_rejected", "rating_status"]].to_numpy().tolist() == [
        [3, 2, 1, "rated"]]
    assert pd.read_csv(tmp_path / "d.csv")["rating"].fillna("").tolist() == ["accept", "reject", "", "missed"]
    # A reload of the same page in the same browser keeps the ratings.
    rater.write_text(html.replace("</body>", READ_BACK))
    kept = browse(chromium, rater, "--dump-dom", profile)
    assert '<pre id="kept">2 of 3 calls rated, 1 missed</pre>' in kept
