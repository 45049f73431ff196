import json

import pytest

from cmbflow.errors import InputError
from cmbflow.inputs import choose_echo, collect_subject_inputs


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
    subjects = collect_subject_inputs(rows, "closest:20")
    assert [s.label for s in subjects] == ["sub-01", "sub-02"]
    one, two = subjects
    assert one.phase is None and one.t1w.name == "sub-01_T1w.nii.gz" and one.echo is None
    assert two.echo == 2 and two.mag.name.startswith("sub-02_echo-2_part-mag")
    assert two.phase.name.startswith("sub-02_echo-2_part-phase")


def test_sessions_are_separate_entries():
    rows = {"mag": [{"subject": "01", "session": s, "path": f"sub-01_ses-{s}.nii.gz"} for s in ("1", "2")]}
    subjects = collect_subject_inputs(rows, "last")
    assert [s.label for s in subjects] == ["sub-01_ses-1", "sub-01_ses-2"]
    assert subjects[1].wildcards == {"subject": "01", "session": "2"}


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
    (one,) = collect_subject_inputs(rows, "last")
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
    good, bad = collect_subject_inputs(rows, "last")
    assert good.label == "sub-01" and good.problem is None
    assert bad.label == "sub-02" and bad.phase is None and message in bad.problem
    assert bad.problem.startswith("sub-02: ") and str(tmp_path) in bad.problem and "\n" not in bad.problem
