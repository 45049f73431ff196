"""cmbflow: detection and counting of cerebral microbleeds in MRI cohorts."""

from importlib.metadata import PackageNotFoundError, version

try:
    # Set at install time from the git tag (hatch-vcs, pyproject.toml).
    __version__ = version("cmbflow")
except PackageNotFoundError:  # src/ on the path without an install (the workflow_scripts link)
    __version__ = "0+unknown"
