import pytest
import yaml

from cmbflow.config import Config, load_config
from cmbflow.errors import InputError


def base(tmp_path, **extra):
    (tmp_path / "bids").mkdir(exist_ok=True)
    return {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out"), **extra}


def test_shipped_config_is_valid(tmp_path):
    raw = yaml.safe_load(open("config/config.yaml"))
    cfg = load_config(raw | base(tmp_path))
    assert cfg.echo == "last" and cfg.phase.paramagnetic_sign == -1
    # the shipped file spells out every default, so it documents what the model means
    assert cfg.pybids_inputs == Config(**base(tmp_path)).pybids_inputs


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"devcie": "cpu"}, "unknown key 'devcie'"),
        ({"device": "tpu"}, "key 'device' = 'tpu'"),
        ({"phase": {"highpass_sigma_mm": "wide"}}, "key 'phase.highpass_sigma_mm' = 'wide'"),
        ({"echo": "middle"}, "key 'echo' = 'middle'"),
        ({"classifier": {"mirror_veto": "sometimes"}}, "key 'classifier.mirror_veto' = 'sometimes'"),
        ({"participant_label": ["../etc"]}, "alphanumeric"),
        ({"bids_dir": "/no/such/dataset"}, "key 'bids_dir' = '/no/such/dataset': Value error, no such folder"),
        ({"ratings_dir": "/no/ratings"}, "key 'ratings_dir' = '/no/ratings': Value error, no such folder (the raters'"),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path, extra, fragment):
    with pytest.raises(InputError) as err:
        load_config(base(tmp_path, **extra))
    assert fragment in str(err.value) and str(err.value).startswith("config: ")
    assert "\n" not in str(err.value)


def test_missing_dirs_and_output_inside_input(tmp_path):
    with pytest.raises(InputError, match="missing bids_dir"):
        load_config({"output_dir": "x"})
    for output_dir in (tmp_path / "derivatives" / "cmbflow", tmp_path):
        with pytest.raises(InputError, match="must not be inside bids_dir"):
            load_config({"bids_dir": str(tmp_path), "output_dir": str(output_dir)})
    (tmp_path / "out" / "bids").mkdir(parents=True)
    with pytest.raises(InputError, match="bids_dir must not be inside output_dir"):
        load_config({"bids_dir": str(tmp_path / "out" / "bids"), "output_dir": str(tmp_path / "out")})


def test_labels_normalised(tmp_path):
    cfg = load_config(base(tmp_path, participant_label="sub-01", echo="2"))
    assert cfg.participant_label == ["01"] and cfg.echo == 2
