"""Rule-based microbleed detector on candidate features (no learning, no black box).

Each rule of the radiological definition of a microbleed (Greenberg et al. 2009: small, round,
dark, not a vessel, paramagnetic) becomes a soft membership: a logistic function of one feature
that is 0.5 exactly at the rule's cut-off and rises monotonically towards the side the rule
favours. The probability of a candidate is the product of its memberships, so it is monotone in
every feature and every factor can be read off on its own (:func:`rule_memberships`). It ranks
candidates (FROC) but is not a calibrated probability. A final call needs every rule to pass
(membership >= 0.5) and the probability to reach ``probability_threshold``.

Defaults come from ``benchmarks/tune_classical.py`` (simulated standard-preset subjects, seed 100)
and assume features from :func:`cmbflow.candidates.find_candidates` on a magnitude image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class ClassicalParams(BaseModel):
    """Cut-offs (where a membership is 0.5) and widths (how soft it is) of the rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_diameter_mm: float = Field(2.0, gt=0, description="smallest apparent diameter (2 x radius_mm)")
    max_diameter_mm: float = Field(10.0, gt=0, description="largest apparent diameter")
    diameter_width_mm: float = Field(0.4, gt=0)
    min_contrast: float = Field(0.7, ge=0, le=1, description="least 1 - darkest/local background; "
                                "simulated bleeds all reach 0.77, so lower it (e.g. 0.5) where faint "
                                "bleeds matter (1.5 T, short TE)")
    contrast_width: float = Field(0.05, gt=0)
    min_roundness: float = Field(0.35, ge=0, le=1, description="least smallest/largest principal axis")
    roundness_width: float = Field(0.05, gt=0)
    max_elongation: float = Field(2.0, ge=1, description="largest largest/middle principal axis")
    elongation_width: float = Field(0.2, gt=0)
    min_frst: float = Field(0.015, ge=0, description="least radial symmetry (FRST) response")
    frst_width: float = Field(0.003, gt=0)
    min_phase_dipole: float = Field(0.05, description="least paramagnetic phase dipole (rad); "
                                    "ignored for candidates without phase")
    phase_dipole_width: float = Field(0.02, gt=0)
    min_edge_distance_mm: float = Field(2.0, ge=0, description="least distance to the brain mask edge")
    edge_distance_width_mm: float = Field(0.5, gt=0)
    probability_threshold: float = Field(0.5, ge=0, le=1)


#: Feature, cut-off field, width field and direction (+1: larger is more microbleed-like).
_RULES: dict[str, tuple[str, str, str, int]] = {
    "small_enough": ("diameter_mm", "max_diameter_mm", "diameter_width_mm", -1),
    "large_enough": ("diameter_mm", "min_diameter_mm", "diameter_width_mm", +1),
    "dark": ("contrast", "min_contrast", "contrast_width", +1),
    "round": ("roundness", "min_roundness", "roundness_width", +1),
    "not_vessel": ("elongation", "max_elongation", "elongation_width", -1),
    "radially_symmetric": ("frst", "min_frst", "frst_width", +1),
    "paramagnetic": ("phase_dipole", "min_phase_dipole", "phase_dipole_width", +1),
    "inside_brain": ("edge_distance_mm", "min_edge_distance_mm", "edge_distance_width_mm", +1),
}


def _features(df: pd.DataFrame) -> pd.DataFrame:
    features = df.copy()
    features["diameter_mm"] = 2.0 * df["radius_mm"]
    if "phase_dipole" not in features:
        features["phase_dipole"] = np.nan
    return features


def rule_memberships(df: pd.DataFrame, params: ClassicalParams) -> pd.DataFrame:
    """Soft membership (0-1) of each candidate in each rule; 1 for phase when it is missing."""
    features = _features(df)
    out = {}
    for rule, (column, cut_field, width_field, direction) in _RULES.items():
        z = direction * (features[column].astype(float) - getattr(params, cut_field)) / getattr(params, width_field)
        membership = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
        out[rule] = membership.fillna(1.0) if rule == "paramagnetic" else membership
    return pd.DataFrame(out, index=df.index)


def score_candidates(df: pd.DataFrame, params: ClassicalParams = ClassicalParams()) -> pd.Series:
    """Probability in [0, 1] that each candidate is a microbleed: the product of its memberships."""
    memberships = rule_memberships(df, params)
    return memberships.prod(axis=1).rename("probability")


def call_microbleeds(df: pd.DataFrame, params: ClassicalParams = ClassicalParams()) -> pd.Series:
    """Final calls: every rule passes (membership >= 0.5) and the probability reaches the threshold."""
    memberships = rule_memberships(df, params)
    passes = (memberships >= 0.5).all(axis=1)
    calls = passes & (memberships.prod(axis=1) >= params.probability_threshold)
    return calls.rename("is_cmb")
