"""The tiny simulated cohort that the workflow tests run on."""

from pathlib import Path

from cmbflow.simulate import simulate_cohort


def tiny_cohort(bids: Path, subjects: int, without_phase: str | None = None) -> Path:
    """``subjects`` tiny simulated subjects (seed 11); ``without_phase`` (e.g. "003") magnitude-only."""
    simulate_cohort(bids, subjects, seed=11, preset="tiny")
    if without_phase:
        for f in (bids / f"sub-{without_phase}" / "anat").glob("*part-phase*"):
            f.unlink()
    return bids
