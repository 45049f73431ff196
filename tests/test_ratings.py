"""Raters' verdicts in: reading and checking, matching to calls, consensus, agreement, cohort tables."""

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.cohort import RATING_COLUMNS, SUMMARY_COLUMNS, write_cohort_tables
from cmbflow.errors import InputError
from cmbflow.ratings import (agreement, cohen_kappa, consensus, match_to_calls, missed_bleeds, rate_subject,
                             ratings_files, read_edited_label_map)
from cmbflow.viewer import call_label_map

#: Two calls 20 mm apart; a 2 mm grid whose world origin is at voxel (10, 10, 10).
CALLS = pd.DataFrame({"x": [0.0, 20.0], "y": [0.0, 0.0], "z": [0.0, 0.0], "probability": [0.9, 0.6],
                      "radius_mm": [1.5, 3.0], "region": ["lobar", "deep"]})
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -20.0


def write_tsv(path, rows, header="x\ty\tz\trating"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    return path


def test_match_within_one_mm_nearest_first_one_to_one():
    calls = [[0, 0, 0], [20, 0, 0]]
    ratings = [[0.9, 0, 0], [20, 0, 1.1], [0.2, 0, 0], [0, 0.5, 0.5]]
    # 0.9 mm: matched until a nearer rating (0.2 mm) takes the call; 1.1 mm: too far.
    assert match_to_calls(ratings, calls).tolist() == [-1, -1, 0, -1]
    assert match_to_calls(ratings[:2], calls).tolist() == [0, -1]
    assert match_to_calls(np.zeros((0, 3)), calls).tolist() == []


def test_one_rater_table_rates_calls_and_adds_missed(tmp_path):
    path = write_tsv(tmp_path / "sub-01_desc-cmb_ratings.tsv",
                     [(0.3, 0, 0, "accept"), (20, 0.5, 0, "reject"), (40, 10, 0, "missed")])
    rated = rate_subject(CALLS, [path], "sub-01")
    assert rated.ratings == ["accept", "reject"]
    assert rated.missed[["x", "y", "z"]].to_numpy().tolist() == [[40, 10, 0]]
    assert list(rated.verdicts.columns) == ["unnamed"]


def test_a_call_no_rater_rated_has_no_rating(tmp_path):
    path = write_tsv(tmp_path / "sub-01_desc-cmb_ratings.tsv", [(20, 0, 0, "unsure")])
    assert rate_subject(CALLS, [path], "sub-01").ratings == [None, "unsure"]


@pytest.mark.parametrize(("rows", "message"), [
    ([(0, 0, 0, "maybe")], "row 2: rating 'maybe' is not one of accept, reject, unsure, missed"),
    ([(0, 0, 0, "accept"), (5, 0, 0, "accept")], "row 3: accept at (5, 0, 0) is not within 1 mm of a call"),
    ([(0, 0, 0, "accept"), (0, 0, 0.1, "reject")], "row 3: reject at (0, 0, 0.1) is not within 1 mm of a call"),
    ([(20, 0, 0.5, "missed")], "row 2: missed at (20, 0, 0.5) is within 1 mm of a call"),
    ([("a", 0, 0, "accept")], "row 2: x y z must be numbers"),
])
def test_bad_ratings_are_one_line_naming_subject_and_file(tmp_path, rows, message):
    path = write_tsv(tmp_path / "sub-01_desc-cmb_ratings.tsv", rows)
    with pytest.raises(InputError) as err:
        rate_subject(CALLS, [path], "sub-01")
    assert str(err.value).startswith(f"sub-01: {path}: {message}")
    assert "\n" not in str(err.value)


def test_a_table_without_the_columns_is_an_error(tmp_path):
    path = write_tsv(tmp_path / "sub-01_desc-cmb_ratings.tsv", [(0, 0, "accept")], header="x\ty\trating")
    with pytest.raises(InputError, match="no column z"):
        rate_subject(CALLS, [path], "sub-01")


def test_consensus_majority_of_accept_and_reject_ties_unsure():
    assert consensus(["accept", "accept", "reject"]) == "accept"
    assert consensus(["accept", "unsure", "unsure"]) == "accept"
    assert consensus(["reject", "accept"]) == "unsure"
    assert consensus(["unsure", "unsure"]) == "unsure"
    assert consensus([]) is None


def test_a_missed_bleed_counts_when_at_least_half_the_raters_marked_it():
    marks = pd.DataFrame({"x": [50, 51.5, 80, 80.5, 81], "y": 0.0, "z": 0.0,
                          "rater": ["a", "b", "a", "a", "c"]})
    # 50 and 51.5 (a and b): one bleed, 2 of 3 raters. 80 (a) and 81 (c): one bleed; a's second
    # mark at 80.5 is a bleed of its own (one mark per rater and bleed), 1 of 3: dropped.
    found = missed_bleeds(marks, ["a", "b", "c"])
    assert found[["x", "n_raters"]].to_numpy().tolist() == [[50.75, 2], [80.5, 2]]
    assert len(missed_bleeds(marks, ["a", "b", "c", "d", "e"])) == 0  # 2 of 5: less than half


def test_cohens_kappa_by_hand():
    a = ["accept", "accept", "reject", "reject", "accept", "unsure"]
    b = ["accept", "reject", "reject", "reject", "accept", "accept"]
    # observed 4/6; chance 3/6*3/6 + 2/6*3/6 + 1/6*0 = 15/36; (24/36 - 15/36) / (21/36) = 3/7
    assert cohen_kappa(a, b) == pytest.approx(3 / 7)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["accept"] * 3, ["accept"] * 3))


def test_several_raters_by_column_or_by_file(tmp_path):
    folder = tmp_path / "sub-01" / "ses-02"
    write_tsv(folder / "sub-01_ses-02_desc-cmb_ratings.tsv",
              [(0, 0, 0, "accept", "ann"), (20, 0, 0, "reject", "ann"), (0, 0, 0, "accept", "bob"),
               (20, 0, 0, "accept", "bob")], header="x\ty\tz\trating\trater")
    write_tsv(folder / "sub-01_ses-02_rater-cy_desc-cmb_ratings.tsv", [(0, 0, 0, "reject"), (20, 0, 0, "unsure")])
    files = ratings_files(tmp_path, "sub-01_ses-02")
    assert [f.name for f in files] == ["sub-01_ses-02_desc-cmb_ratings.tsv",
                                       "sub-01_ses-02_rater-cy_desc-cmb_ratings.tsv"]
    rated = rate_subject(CALLS, files, "sub-01_ses-02")
    assert rated.verdicts.to_numpy().tolist() == [["accept", "accept", "reject"], ["reject", "accept", "unsure"]]
    assert rated.ratings == ["accept", "unsure"]
    table = agreement([rated.verdicts])
    assert table[["rater_a", "rater_b", "n_calls", "percent_agreement"]].to_numpy().tolist() == [
        ["ann", "bob", 2, 50.0], ["ann", "cy", 2, 0.0], ["bob", "cy", 2, 0.0]]


def test_one_rater_in_two_files_is_an_error(tmp_path):
    one = write_tsv(tmp_path / "sub-01_rater-ann_desc-cmb_ratings.tsv", [(0, 0, 0, "accept")])
    two = write_tsv(tmp_path / "sub-01_desc-cmb_ratings.tsv", [(20, 0, 0, "accept", "ann")],
                    header="x\ty\tz\trating\trater")
    with pytest.raises(InputError, match="rater ann also rated in"):
        rate_subject(CALLS, [one, two], "sub-01")


def test_edited_label_map_kept_removed_and_new_labels(tmp_path):
    labels = call_label_map(CALLS, (30, 30, 30), AFFINE)
    labels[labels == 2] = 0  # call 2 rejected
    labels[24:26, 10, 10] = 7  # a new bleed: two voxels, at world (28, 0, 0) and (30, 0, 0) mm
    labels[2, 2, 2] = 3  # another one, a label value no call has
    path = tmp_path / "sub-01_rater-ann_desc-cmb_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), path)
    rows = read_edited_label_map(path, CALLS, "sub-01")
    assert rows.rating.tolist() == ["accept", "reject", "missed", "missed"]
    assert rows[["x", "y", "z"]].to_numpy()[2:].tolist() == [[-16.0, -16.0, -16.0], [29.0, 0.0, 0.0]]
    assert set(rows.rater) == {"ann"}
    rated = rate_subject(CALLS, [path], "sub-01")
    assert rated.ratings == ["accept", "reject"] and len(rated.missed) == 2


def test_a_label_map_of_other_calls_is_an_error(tmp_path):
    path = tmp_path / "sub-01_desc-cmb_dseg.nii.gz"
    nib.save(nib.Nifti1Image(call_label_map(CALLS, (30, 30, 30), AFFINE), AFFINE), path)
    with pytest.raises(InputError, match="label 1 is not where call 1 of the calls table is"):
        read_edited_label_map(path, CALLS.iloc[::-1].reset_index(drop=True), "sub-01")
    labels = call_label_map(CALLS, (30, 30, 30), AFFINE)
    labels[10, 10, 10] = 9  # a call relabelled: a new label at a call is no missed bleed
    nib.save(nib.Nifti1Image(labels, AFFINE), path)
    with pytest.raises(InputError, match=r"^sub-01: \S+: missed at \(0, 0, 0\) is within 1 mm of a call"):
        rate_subject(CALLS, [path], "sub-01")


def summary(tmp_path, participant):
    path = tmp_path / f"{participant}.json"
    path.write_text(json.dumps({c: 1 for c in SUMMARY_COLUMNS} | {"participant_id": participant, "session_id": None}))
    return path


def calls_tsv(tmp_path, name):
    path = tmp_path / f"{name}.tsv"
    CALLS.assign(i=[7, 8]).to_csv(path, sep="\t", index=False)
    return path


def test_cohort_tables_without_ratings_are_as_before(tmp_path):
    write_cohort_tables([summary(tmp_path, "sub-01")], [calls_tsv(tmp_path, "a")], tmp_path / "s.csv",
                        tmp_path / "d.csv")
    assert list(pd.read_csv(tmp_path / "s.csv").columns) == SUMMARY_COLUMNS + ["status"]
    assert list(pd.read_csv(tmp_path / "d.csv").columns) == ["participant_id", "session_id", *CALLS.columns, "i"]


def test_cohort_tables_with_ratings(tmp_path):
    ratings = tmp_path / "ratings"
    write_tsv(ratings / "sub-01" / "sub-01_desc-cmb_ratings.tsv",
              [(0, 0, 0, "accept"), (20, 0, 0, "reject"), (40, 0, 0, "missed")])
    out = tmp_path / "group"
    write_cohort_tables([summary(tmp_path, "sub-01"), summary(tmp_path, "sub-02")],
                        [calls_tsv(tmp_path, "a"), calls_tsv(tmp_path, "b")], out / "s.csv", out / "d.csv",
                        failed={"sub-03": "failed in candidates: x"}, ratings_dir=ratings, out_agreement=out / "a.csv")
    table = pd.read_csv(out / "s.csv", keep_default_na=False)
    assert list(table.columns) == SUMMARY_COLUMNS + RATING_COLUMNS + ["status"]
    assert table[RATING_COLUMNS].astype(str).to_numpy().tolist() == [["2", "1", "rated"], ["", "", "not rated"],
                                                                      ["", "", ""]]
    calls = pd.read_csv(out / "d.csv")
    assert list(calls.columns) == ["participant_id", "session_id", *CALLS.columns, "i", "rating"]
    assert (out / "d.csv").read_text().splitlines()[1:4] == [
        "sub-01,,0.0000,0.0000,0.0000,0.9000,1.5000,lobar,7,accept",
        "sub-01,,20.0000,0.0000,0.0000,0.6000,3.0000,deep,8,reject", "sub-01,,40.0000,0.0000,0.0000,,,,,missed"]
    assert calls.rating.fillna("").tolist() == ["accept", "reject", "missed", "", ""]
    assert calls.probability.isna().tolist() == [False, False, True, False, False]
    assert list(pd.read_csv(out / "a.csv").columns) == ["rater_a", "rater_b", "n_calls", "percent_agreement",
                                                        "cohen_kappa"]
