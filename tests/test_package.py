"""The wheel: built from this checkout, installed in a fresh venv, run from a folder outside it."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from cohorts import tiny_cohort

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]


def run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:
    """A venv outside the checkout holding the cmbflow wheel, and the wheel's version. The
    dependencies come from this test's environment through a .pth file, not from an index."""
    tmp = tmp_path_factory.mktemp("package")
    # pip's isolated build fetches only hatchling and hatch-vcs (or takes them from its cache):
    # in this environment, snakemake's packaging<26 would clash with the newest hatch-vcs.
    build = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp / "dist", REPO, cwd=tmp)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("cmbflow-*.whl")
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = run(env / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    assert install.returncode == 0, install.stderr[-3000:]
    return env, wheel.name.split("-")[1]


def test_version(installed, tmp_path):
    env, version = installed
    result = run(env / "bin" / "cmbflow", "--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"cmbflow {version}"


def test_participant_run_uses_packaged_workflow(installed, tmp_path):
    env, _ = installed
    where = run(env / "bin" / "python", "-c", "from cmbflow.resources import workflow_dir; print(workflow_dir())", cwd=tmp_path)
    packaged = Path(where.stdout.strip())
    assert packaged.is_relative_to(env) and (packaged / "Snakefile").is_file(), where.stderr
    assert not (packaged / "workflow_scripts" / "cmbflow").exists()  # the checkout's link stays out

    bids, out = tiny_cohort(tmp_path / "bids", 1), tmp_path / "out"
    result = run(env / "bin" / "cmbflow", bids, out, "participant", "--cores", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "sub-001" / "anat" / "sub-001_desc-cmb_detections.tsv").exists()
    assert (out / "group" / "cohort_summary.csv").exists()
    # Snakemake names the config it read: the packaged one, not the checkout's.
    log = result.stdout + result.stderr
    assert f"{packaged}/config/config.yaml" in log and str(REPO / "config") not in log
