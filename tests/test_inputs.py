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
