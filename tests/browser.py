"""Headless Chromium for the report tests: pages opened as a user's browser would."""

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium (make system-deps installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium: run make system-deps")
    return found


def browse(chromium: str, page: Path, *args: str) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=10000", *args, page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
