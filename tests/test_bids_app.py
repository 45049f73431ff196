"""The BIDS-App command line: its options, the Snakemake command it builds, bids-validator per subject."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmbflow import bids_app
from cmbflow.bids_validation import report_validation
from cmbflow.resources import workflow_dir


def command(*argv: str) -> list[str]:
    args, rest = bids_app.build_parser().parse_known_args(["/data/bids", "/data/out", *argv])
    return bids_app.snakemake_command(args, rest)


def config_of(cmd: list[str]) -> list[str]:
    start = cmd.index("--config") + 1
    return cmd[start:next((i for i in range(start, len(cmd)) if cmd[i].startswith("-")), len(cmd))]


def test_config_is_not_taken_for_configfile_and_the_own_flags_come_last():
    cmd = command("participant", "--config", "device=cuda", "echo=first", "--device", "cpu", "-n")
    entries = config_of(cmd)
    assert entries[:2] == ["device=cuda", "echo=first"]  # the user's, then ours: later entries win
    assert 'device="cpu"' in entries[2:] and "--configfile" not in cmd and cmd[-1] == "-n"


def test_classifier_flags_merge_into_one_nested_entry():
    entries = config_of(command("participant", "--model-dir", "/models/site", "--threshold", "0.7"))
    classifier = [e for e in entries if e.startswith("classifier=")]
    assert [json.loads(e.split("=", 1)[1]) for e in classifier] == [{"model_dir": "/models/site", "threshold": 0.7}]


def test_ratings_dir_reaches_the_config():
    assert f'ratings_dir="{Path("/r").resolve()}"' in config_of(command("group", "--ratings-dir", "/r"))
    assert not any(e.startswith("ratings_dir=") for e in config_of(command("group")))


def test_labels_stay_strings():
    entries = config_of(command("participant", "--participant-label", "001", "sub-02"))
    assert 'participant_label=["001", "sub-02"]' in entries


@pytest.mark.parametrize(
    ("argv", "target"),
    [(["participant"], "all"), (["participant", "--participant-label", "01"], "participant"),
     (["participant", "--exclude-participant-label", "01"], "participant"), (["group"], "group")],
)
def test_targets_follow_the_analysis_level(argv, target):
    cmd = command(*argv)
    assert cmd[3] == target  # right after `python -m snakemake`, before options that take many words
    assert ("--allowed-rules" in cmd) == (target == "group")


def test_work_dir_holds_snakemake_state_and_defaults_under_the_output():
    assert command("participant")[command("participant").index("--directory") + 1] == "/data/out/work"
    cmd = command("participant", "--work-dir", "/scratch/w")
    assert cmd[cmd.index("--directory") + 1] == "/scratch/w" and 'work_dir="/scratch/w"' in config_of(cmd)


def test_profile_names_a_shipped_profile_unless_a_folder_of_that_name_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = command("participant", "--profile", "slurm")
    assert cmd[cmd.index("--profile") + 1] == str(workflow_dir() / "profiles" / "slurm")
    (tmp_path / "slurm").mkdir()
    cmd = command("participant", "--profile", "slurm")
    assert cmd[cmd.index("--profile") + 1] == "slurm"


def test_scheduling_defaults_to_every_core_unless_given():
    assert command("participant")[-2:] == ["--cores", "all"]
    assert "all" not in command("participant", "--profile", "slurm")[4:]


def test_validator_errors_are_told_per_selected_subject(tmp_path, capsys):
    from cmbflow.simulate import simulate_cohort

    bids = tmp_path / "bids"
    simulate_cohort(bids, 2, seed=11, preset="tiny")
    for sidecar in (bids / "sub-002" / "anat").glob("*part-phase*.json"):
        sidecar.unlink()  # a phase without its Units: an error of sub-002 only
    report_validation(bids, [], [])
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("cmbflow: bids-validator: sub-002: ") and "Units" in line for line in lines), lines
    assert not any("sub-001" in line for line in lines)
    report_validation(bids, ["001"], [])
    assert "sub-002" not in capsys.readouterr().err


def test_cli_version():
    result = subprocess.run([sys.executable, "-m", "cmbflow.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("cmbflow ")


def test_a_missing_bids_dir_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=f"cmbflow: no BIDS dataset at {tmp_path / 'nothing'}"):
        bids_app.run([str(tmp_path / "nothing"), str(tmp_path / "out"), "participant"])
    assert not Path(tmp_path / "out").exists()
