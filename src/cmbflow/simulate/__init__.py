"""Physically based simulator of GRE magnitude/phase cohorts with known microbleeds (BIDS output).

Used for the demo, the tests, tuning and evaluating the detector, and (with the ``diverse``
preset) training data. See :mod:`cmbflow.simulate.subject` for how the signal is built,
:mod:`cmbflow.simulate.anatomy` for anatomy, regions and placement rules.
"""

from cmbflow.simulate.bids import simulate_cohort
from cmbflow.simulate.params import PRESETS, SubjectParams, sample_subject_params
from cmbflow.simulate.subject import SimulatedSubject, simulate_subject

__all__ = [
    "PRESETS",
    "SimulatedSubject",
    "SubjectParams",
    "sample_subject_params",
    "simulate_cohort",
    "simulate_subject",
]
