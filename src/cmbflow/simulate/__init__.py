"""Physically based simulator of GRE magnitude/phase cohorts with known microbleeds (BIDS output).

Used for the demo, the tests, tuning and evaluating the detector, and (with the ``diverse``
preset) training data. See :mod:`cmbflow.simulate.subject` for how the signal is built,
:mod:`cmbflow.simulate.anatomy` for anatomy, regions and placement rules.

Cost on one core (measured on the development machine, shared and loaded): a process first builds
the MNI152 tissue canvas once (~3 s for ``tiny``, ~10 s and ~0.9 GB for the others); then a
``tiny`` subject takes ~2-4 s and ~0.55 GB peak, a ``standard`` subject ~10-19 s and ~1.6 GB peak,
a ``diverse`` subject up to ~30 s (0.5 mm in-plane grids).
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
