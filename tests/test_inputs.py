import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from cmbflow.config import load_config
from cmbflow.errors import InputError
from cmbflow.inputs import choose_echo, choose_scan, collect_subject_inputs, find_files

LAST = {"acquisition": "last", "run": "last"}
REPO = Path(__file__).resolve().parents[1]


def test_choose_echo_rules():
    tes = {1: 0.01, 2: 0.02, 3: 0.03}
    assert choose_echo(tes, "first", label="sub-01") == 1
    assert choose_echo(tes, "last", label="sub-01") == 3
    assert choose_echo(tes, 2, label="sub-01") == 2
    assert choose_echo(tes, "closest:22", label="sub-01") == 2
    with pytest.raises(InputError, match="echo 5 requested"):
        choose_echo(tes, 5, label="sub-01")
    with pytest.raises(InputError, match="needs echo times"):
        choose_echo({1: None, 2: 0.02}, "closest:20", label="sub-01")


def test_pairs_phase_picks_echo_and_t1w(tmp_path):
    rows = {"megre_mag": [], "megre_phase": []}
    for echo, te in ((1, 0.01), (2, 0.025), (3, 0.04)):
        for part in ("mag", "phase"):
            path = tmp_path / f"sub-02_echo-{echo}_part-{part}_MEGRE.nii.gz"
            path.with_suffix("").with_suffix(".json").write_text(json.dumps({"EchoTime": te}))
            rows[f"megre_{part}"].append({"subject": "02", "echo": str(echo), "path": str(path)})
    rows["mag"] = [{"subject": "01", "path": "sub-01_part-mag_T2starw.nii.gz"}]
    rows["t1w"] = [{"subject": "01", "path": "sub-01_T1w.nii.gz"}]
    subjects = collect_subject_inputs(rows, "closest:20", LAST)
    assert [s.label for s in subjects] == ["sub-01", "sub-02"]
    one, two = subjects
    assert one.phase is None and one.t1w.name == "sub-01_T1w.nii.gz" and one.echo is None
    assert two.echo == 2 and two.mag.name.startswith("sub-02_echo-2_part-mag")
    assert two.phase.name.startswith("sub-02_echo-2_part-phase")


def test_sessions_are_separate_entries():
    rows = {"mag": [{"subject": "01", "session": s, "path": f"sub-01_ses-{s}.nii.gz"} for s in ("1", "2")]}
    subjects = collect_subject_inputs(rows, "last", LAST)
    assert [s.label for s in subjects] == ["sub-01_ses-1", "sub-01_ses-2"]
    assert subjects[1].wildcards == {"subject": "01", "session": "2", "ses_dir": "/ses-2", "ses_name": "_ses-2"}


def megre_rows(tmp_path, subject, echo_times, phase_times=None):
    """MEGRE rows of one subject: sidecars with these EchoTimes (phase: ``phase_times`` or the same)."""
    rows = {"megre_mag": [], "megre_phase": []}
    for part, times in (("mag", echo_times), ("phase", phase_times or echo_times)):
        for echo, te in enumerate(times, start=1):
            path = tmp_path / f"sub-{subject}_echo-{echo}_part-{part}_MEGRE.nii.gz"
            path.with_suffix("").with_suffix(".json").write_text(te if isinstance(te, str) else json.dumps({"EchoTime": te}))
            rows[f"megre_{part}"].append({"subject": subject, "echo": str(echo), "path": str(path)})
    return rows


def test_echo_stack_sidecars_with_phase_pass(tmp_path):
    rows = {}
    for part in ("mag", "phase"):
        path = tmp_path / f"sub-01_part-{part}_T2starw.nii.gz"
        path.with_suffix("").with_suffix(".json").write_text(json.dumps({"EchoTime": [0.01, 0.02]}))
        rows[part] = [{"subject": "01", "path": str(path)}]
    (one,) = collect_subject_inputs(rows, "last", LAST)
    assert one.problem is None and one.phase is not None


@pytest.mark.parametrize(
    "echo_times, phase_times, message",
    [
        ([0.03, 0.02, 0.01], None, "echo-2_part-mag_MEGRE.nii.gz: EchoTime 0.02 s of echo 2 is not later than the echo before (0.03 s)"),
        ([0.01, 0.02, 0.03], [0.01, 0.02, 0.035], "EchoTime 0.035 s differs from the magnitude's 0.03 s"),
        ([0.01, 0.02, "{not json"], None, "sidecar is not valid JSON"),
        ([0.01, 0.02, "[0.03]"], None, "sidecar is not a JSON object"),
        ([0.01, 0.02, {"ms": 30}], None, "EchoTime {'ms': 30} in its sidecar is not a number"),
    ],
)
def test_contradictory_sidecars_fail_only_their_subject(tmp_path, echo_times, phase_times, message):
    rows = megre_rows(tmp_path, "02", echo_times, phase_times)
    rows["mag"] = [{"subject": "01", "path": "sub-01_part-mag_T2starw.nii.gz"}]
    good, bad = collect_subject_inputs(rows, "last", LAST)
    assert good.label == "sub-01" and good.problem is None
    assert bad.label == "sub-02" and bad.phase is None and message in bad.problem
    assert bad.problem.startswith("sub-02: ") and str(tmp_path) in bad.problem and "\n" not in bad.problem


def scans(subject="01", **entities):
    """Magnitude rows of one subject, one per combination: scans(run=["1", "2"], acquisition=["lo"])."""
    rows = [{"subject": subject, "path": f"sub-{subject}"}]
    for entity, values in entities.items():
        key = {"acquisition": "acq", "run": "run"}[entity]
        rows = [r | ({entity: v, "path": f"{r['path']}_{key}-{v}"} if v else {}) for r in rows for v in values]
    return [r | {"path": r["path"] + "_part-mag_T2starw.nii.gz"} for r in rows]


@pytest.mark.parametrize(
    "rule, used",
    [("last", "10"), ("first", ""), ("2", "2"), ("02", "2")],  # runs by number (run-10 last), no run- first
)
def test_choose_scan_run_rules(rule, used):
    (row,), choice = choose_scan(scans(run=["", "2", "10"]), LAST | {"run": rule}, label="sub-01")
    assert row.get("run", "") == used
    shown = "run-" + used if used else "no run-"
    assert choice == f"3 runs (no run-, run-2, run-10): using {shown} (config select.run: {rule})"


def test_choose_scan_acquisition_then_run():
    rows = scans(acquisition=["hi", "lo"], run=["1", "2"])
    (row,), choice = choose_scan(rows, {"acquisition": "hi", "run": "first"}, label="sub-01")
    assert row["path"] == "sub-01_acq-hi_run-1_part-mag_T2starw.nii.gz"
    assert choice == ("2 acquisitions (acq-hi, acq-lo): using acq-hi (config select.acquisition: hi); "
                      "2 runs (run-1, run-2): using run-1 (config select.run: first)")
    assert choose_scan(scans(run=["1"]), LAST, label="sub-01")[1] is None  # no choice, nothing to say


def test_a_missing_run_or_a_duplicate_fails_only_its_subject():
    rows = {"mag": [*scans("01", run=["1", "2"]), *scans("02", run=["3"]),
                    *scans("03"), {"subject": "03", "path": "sub-03_part-mag_T2starw.nii"}]}
    one, two, three = collect_subject_inputs(rows, "last", LAST | {"run": "3"})
    assert one.problem == ("sub-01: run 3 requested but the data have run-1, run-2; "
                           "set select.run in the config to one that exists, or to first or last")
    assert two.problem is None and two.choice is None and two.mag.name == "sub-02_run-3_part-mag_T2starw.nii.gz"
    assert "2 files for one scan: sub-03_part-mag_T2starw.nii, sub-03_part-mag_T2starw.nii.gz" in three.problem


def test_select_config_is_validated(tmp_path):
    (tmp_path / "bids").mkdir()
    raw = {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out")}
    assert load_config(raw | {"select": {"run": 2}}).select.model_dump() == {"acquisition": "last", "run": "2"}
    with pytest.raises(InputError, match="key 'select.run' = 'latest'.*first, last or a run number"):
        load_config(raw | {"select": {"run": "latest"}})
    with pytest.raises(InputError, match="key 'select.acquisition' = 'hi-res'.*an acq- label"):
        load_config(raw | {"select": {"acquisition": "hi-res"}})


def skeleton(root, *files):
    """Empty files (pybids reads names only) under root."""
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def config(bids, *configfiles, **extra):
    """The shipped config, merged with configfiles as Snakemake merges --configfile, and extra."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for path in configfiles:
        update_config(raw, yaml.safe_load((REPO / path).read_text()))
    return load_config(raw | {"bids_dir": str(bids), "output_dir": str(bids.parent / "out")} | extra)


def test_find_files_mixes_sessions_and_runs(tmp_path):
    bids = skeleton(tmp_path / "bids", "sub-01/anat/sub-01_part-mag_T2starw.nii.gz",
                    "sub-01/anat/sub-01_part-phase_T2starw.nii.gz",
                    "sub-02/ses-01/anat/sub-02_ses-01_run-1_part-mag_T2starw.nii.gz",
                    "sub-02/ses-01/anat/sub-02_ses-01_run-2_part-mag_T2starw.nii.gz",
                    "sub-03/anat/sub-03_part-mag_T2starw.nii.gz",
                    "derivatives/x/sub-04/anat/sub-04_part-mag_T2starw.nii.gz")
    rows = find_files(config(bids, exclude_participant_label=["03"]))
    assert sorted((r["subject"], r.get("session"), r.get("run")) for r in rows["mag"]) == [
        ("01", None, None), ("02", "01", "1"), ("02", "01", "2")]
    assert [Path(r["path"]).name for r in rows["phase"]] == ["sub-01_part-phase_T2starw.nii.gz"]
    one, two = collect_subject_inputs(rows, "last", LAST)
    assert (one.label, one.wildcards) == ("sub-01", {"subject": "01", "ses_dir": "", "ses_name": ""})
    assert two.label == "sub-02_ses-01" and two.mag.name.startswith("sub-02_ses-01_run-2")
    assert [r["subject"] for r in find_files(config(bids, participant_label=["02"]))["mag"]] == ["02", "02"]


def test_swi_and_gre_named_magnitudes_with_the_example_config(tmp_path):
    bids = skeleton(tmp_path / "bids", "sub-01/anat/sub-01_swi.nii.gz", "sub-02/ses-01/anat/sub-02_ses-01_GRE.nii",
                    *(f"sub-02/ses-01/anat/sub-02_ses-01_run-{run}_T1w.nii.gz" for run in (1, 2)))
    assert find_files(config(bids))["mag"] == []  # the default filters want part-mag_T2starw
    rows = find_files(config(bids, "config/examples/swi.yaml"))
    one, two = collect_subject_inputs(rows, "last", LAST)
    assert (one.mag.name, one.phase, one.t1w, one.choice) == ("sub-01_swi.nii.gz", None, None, None)
    assert (two.mag.name, two.t1w.name) == ("sub-02_ses-01_GRE.nii", "sub-02_ses-01_run-2_T1w.nii.gz")
    assert two.choice == "2 T1w images: using sub-02_ses-01_run-2_T1w.nii.gz (the last by name)"
