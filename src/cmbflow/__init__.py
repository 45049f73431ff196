"""cmbflow: detection and counting of cerebral microbleeds in MRI cohorts."""

__version__ = "0.1.0"
