import json

import nibabel as nib
import numpy as np
import pytest

from cmbflow.errors import InputError
from cmbflow.stages import load_gre


def write_4d(tmp_path, sidecar):
    data = np.stack([np.full((6, 6, 6), v, np.float32) + np.arange(6.0)[:, None, None] for v in (10, 20, 30)], -1)
    path = tmp_path / "sub-01_part-mag_T2starw.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 1.8, 1])), path)
    if sidecar is not None:
        (tmp_path / "sub-01_part-mag_T2starw.json").write_text(json.dumps(sidecar))
    return path


def test_echo_stack_with_echo_times_picks_the_echo(tmp_path):
    path = write_4d(tmp_path, {"EchoTime": [0.01, 0.02, 0.03]})
    assert load_gre(path, "last", "sub-01").get_fdata()[0, 0, 0] == 30
    assert load_gre(path, "closest:19", "sub-01").get_fdata()[0, 0, 0] == 20


@pytest.mark.parametrize("sidecar", [None, {"EchoTime": 0.02}, {"EchoTime": [0.01, 0.02]}])
def test_4d_without_one_echo_time_per_volume_is_rejected(tmp_path, sidecar):
    path = write_4d(tmp_path, sidecar)
    with pytest.raises(InputError, match="4D image of shape"):
        load_gre(path, "last", "sub-01")
