"""The workflow configuration, validated once at start-up.

Every key of ``config/config.yaml`` is a field here; an unknown key, a wrong type or a bad value
stops the workflow before any job runs, with a message naming the key, the value and what is
expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cmbflow.errors import InputError

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_ECHO_RULE = re.compile(r"^(first|last|closest:\d+(\.\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputFilter(_Strict):
    """One input component: the pybids filters its files match (true/false: the entity is
    present/absent), and the entities that tell its files apart (cmbflow.inputs.find_files)."""

    filters: dict[str, str | bool | list[str | bool]]
    wildcards: list[str]

    @field_validator("wildcards")
    @classmethod
    def _has_subject(cls, value: list[str]) -> list[str]:
        if "subject" not in value:
            raise ValueError("must include subject (and session, acquisition, run, echo where the data have them)")
        return value


#: Component names cmbflow understands: single-echo (T2starw) and multi-echo (MEGRE) magnitude and
#: phase, and an optional T1w.
COMPONENTS = ("mag", "phase", "megre_mag", "megre_phase", "t1w")


def _default_inputs() -> dict[str, InputFilter]:
    entities = ["subject", "session", "acquisition", "run"]
    nifti = [".nii.gz", ".nii"]

    def gre(part: str, suffix: str) -> InputFilter:
        return InputFilter(
            filters={"datatype": "anat", "part": part, "suffix": suffix, "extension": nifti},
            wildcards=entities + (["echo"] if suffix == "MEGRE" else []),
        )

    return {
        "mag": gre("mag", "T2starw"),
        "phase": gre("phase", "T2starw"),
        "megre_mag": gre("mag", "MEGRE"),
        "megre_phase": gre("phase", "MEGRE"),
        "t1w": InputFilter(filters={"datatype": "anat", "suffix": "T1w", "extension": nifti}, wildcards=entities),
    }


class SelectConfig(_Strict):
    """Which scan to use when a subject/session has several (cmbflow.inputs.choose_scan)."""

    acquisition: str = Field("last", description="first | last (by label) | an acq- label")
    run: str = Field("last", description="first | last (by number) | a run number")

    @field_validator("acquisition", "run", mode="before")
    @classmethod
    def _rule(cls, value: Any, info: ValidationInfo) -> str:
        value = str(value)  # YAML reads run: 2 as a number
        if value in ("first", "last") or (value.isdigit() if info.field_name == "run" else _LABEL.match(value)):
            return value
        raise ValueError(f"expected first, last or {'a run number' if info.field_name == 'run' else 'an acq- label'}")


class PhaseConfig(_Strict):
    paramagnetic_phase: Literal["negative", "positive"] = Field(
        "negative",
        description="sign of the phase that paramagnetic sources (veins, microbleeds) produce in "
        "your data: negative for right-handed reconstructions (Siemens default)",
    )
    highpass_sigma_mm: float = Field(4.0, gt=0, le=50)
    swi_power: int = Field(4, ge=1, le=10)

    @property
    def paramagnetic_sign(self) -> int:
        return -1 if self.paramagnetic_phase == "negative" else 1


class CandidateParams(_Strict):
    """Stage 1: settings of the candidate generators (cmbflow.candidates; defaults tuned on simulated
    0.9x0.9x1.8 mm data)."""

    background_sigma_mm: float = Field(5.0, gt=0, description="width of the local background estimate")
    background_exclude: float = Field(
        0.8, gt=0, le=1, description="voxels darker than this fraction of the background are left "
        "out of its second estimate, so dark lesions and veins do not pull it down"
    )
    seed_contrast: float = Field(0.25, gt=0, lt=1, description="least 1 - intensity/smooth background "
                                 "of a seed voxel")
    min_contrast: float = Field(0.25, gt=0, lt=1, description="least 1 - darkest/local background of a "
                                "candidate (the background just outside it)")
    frst_radii_mm: tuple[float, ...] = Field((1.0, 1.5, 2.0, 3.0, 4.0), min_length=1)
    frst_alpha: float = Field(2.0, gt=0)
    frst_gradient_quantile: float = Field(0.7, ge=0, lt=1)
    frst_threshold: float = Field(0.01, ge=0, description="least FRST response of an FRST peak")
    component_contrasts: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field(
        (0.25, 0.5, 0.75), min_length=1, description="dark components are taken at each of these "
        "contrasts (1 - intensity/smooth background): a bleed inside a larger dark region separates "
        "from it at a deeper level"
    )
    min_diameter_mm: float = Field(1.2, gt=0, description="least equivalent diameter of a dark component")
    max_diameter_mm: float = Field(12.0, gt=0, description="largest equivalent diameter of a dark component")
    min_radius_mm: float = Field(0.6, ge=0, description="least apparent radius of a candidate (drops "
                                 "one- and two-voxel noise dips at ~1 mm resolution)")
    peak_distance_mm: float = Field(2.0, gt=0, description="radius of the local-maximum / darkest-voxel search")
    merge_distance_mm: float = Field(2.5, ge=0, description="seeds, and candidate centres, closer than this "
                                     "are one candidate")
    region_half_width_mm: float = Field(12.0, gt=0, description="half width of the box a region may grow in")
    background_search_mm: float = Field(6.0, gt=0, description="a lesion's first background estimate is the "
                                        "brightest shell median within this distance of its darkest voxel")
    background_shell_mm: float = Field(2.0, gt=0, description="thickness of the shell outside a lesion "
                                       "whose median is its local background")
    centroid_radius_mm: float = Field(3.0, gt=0, description="region voxels within this of the darkest "
                                      "voxel give the candidate's position")
    dipole_shell_mm: float = Field(3.0, gt=0, description="thickness of the shell beyond the apparent "
                                   "radius in which the phase dipole is measured")
    claim_roundness: float = Field(0.5, ge=0, le=1, description="a candidate region at least this round "
                                   "absorbs the other seeds inside it")
    max_candidates: int = Field(2000, gt=0, description="keep at most this many (the darkest)")


class ClassifierConfig(_Strict):
    """Stage 2: which trained model scores the candidates, and where calls start."""

    model_dir: Path | None = Field(
        None, description="folder with phase.safetensors, magnitude.safetensors and model_card.json; "
        "null = the model shipped with cmbflow")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="least probability of a call; null = the model card's threshold, "
        "chosen on the validation cohort")
    mirror_veto: bool = Field(
        True, description="apply the model card's mirror veto (no call where the image at the mirror image "
        "across the MNI midline is that dark, as at iron nuclei; the shipped magnitude-only model has one); "
        "false: none")


class TrainParams(_Strict):
    """Optimisation settings of the classifier (cmbflow.training; one set for both models)."""

    epochs: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    negatives_per_positive: int = Field(4, ge=1, description="negatives drawn per positive each epoch")
    mimics_every_epoch: bool = Field(True, description="show every named mimic (calcification) in every "
                                     "epoch, on top of the drawn negatives")
    widths: tuple[int, ...] = (8, 16, 32)
    context_mm: float = Field(0.0, ge=0, description="extent of the wide view beside the 20 mm patch "
                              "(cmbflow.patches), e.g. 40; 0 = none (it did not help: benchmarks/RESULTS.md)")
    seed: int = 0


class TrainingConfig(_Strict):
    """``snakemake train``: simulated cohorts, and how the classifier is trained on them."""

    dir: Path = Field(Path("training"), description="where cohorts, patches and the new model go")
    train_subjects: int = Field(40, ge=2)
    train_seed: int = Field(3000, ge=0)
    validation_subjects: int = Field(20, ge=1)
    validation_seed: int = Field(4000, ge=0)
    max_fp_per_scan: dict[Literal["phase", "magnitude"], float] = Field(
        default_factory=lambda: {"phase": 0.5, "magnitude": 1.0},
        description="operating point of each model on the validation cohort (false positives per scan)")
    mirror_veto: dict[Literal["phase", "magnitude"], Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"magnitude": 0.8},
        description="a model named here calls no candidate where the image at its mirror image is at least this "
        "dark relative to it (cmbflow.detections.mirror_vetoed): the magnitude-only model's calls at iron nuclei; "
        "the phase model makes none on validation (benchmarks/RESULTS.md)")
    members: dict[Literal["phase", "magnitude"], Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"phase": 2, "magnitude": 3},
        description="networks per model (seeds 0, 1, ...), logits averaged; the magnitude-only model "
        "ranks from less evidence and gains more from a third")
    params: TrainParams = TrainParams()


class LongitudinalConfig(_Strict):
    """Subjects with two sessions or more: new microbleeds since baseline (docs/longitudinal.md)."""

    baseline_session: str | None = Field(
        None, description="the session every other is compared with (its label, without ses-); "
        "null = each subject's earliest session label")

    @field_validator("baseline_session", mode="before")
    @classmethod
    def _session(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        label = str(value).removeprefix("ses-")
        if not _LABEL.match(label):
            raise ValueError(f"session label {label!r} must be alphanumeric (BIDS)")
        return label


class Config(_Strict):
    """Top-level configuration (config/config.yaml plus ``--config`` overrides)."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Path | None = Field(None, description="intermediate files that no output keeps; null = output_dir/work")
    participant_label: list[str] = []
    exclude_participant_label: list[str] = []
    pybids_inputs: dict[str, InputFilter] = Field(default_factory=_default_inputs)
    pybidsdb_dir: Path | None = None
    echo: str | int = Field(
        "last",
        description="echo to use from multi-echo (MEGRE) data: first, last, an echo number, "
        "or closest:<TE in ms>",
    )
    select: SelectConfig = SelectConfig()
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu", description="where FRST and the classifier run: a GPU saves under a second per subject "
        "(docs/performance.md), so the CPU unless asked; auto = CUDA when present")
    ratings_dir: Path | None = Field(
        None, description="raters' verdicts on the calls (docs/ratings.md); the cohort tables add the "
        "consensus; null = no ratings")
    analysis_level: Literal["participant", "group"] = Field(
        "participant", description="group: the cohort tables cover only the subjects whose outputs exist "
        "(cmbflow ... group)")
    longitudinal: LongitudinalConfig = LongitudinalConfig()
    phase: PhaseConfig = PhaseConfig()
    candidates: CandidateParams = CandidateParams()
    classifier: ClassifierConfig = ClassifierConfig()
    training: TrainingConfig = TrainingConfig()

    @field_validator("participant_label", "exclude_participant_label", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> list[str]:
        if value is None or value == "":
            return []
        labels = [value] if isinstance(value, (str, int)) else list(value)
        labels = [str(v).removeprefix("sub-") for v in labels]
        for label in labels:
            if not _LABEL.match(label):
                raise ValueError(f"participant label {label!r} must be alphanumeric (BIDS)")
        return labels

    @field_validator("bids_dir", "ratings_dir")
    @classmethod
    def _folder_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not value.is_dir():
            what = "the BIDS dataset to read" if info.field_name == "bids_dir" else "the raters' files"
            raise ValueError(f"no such folder ({what})")
        return value

    @field_validator("echo")
    @classmethod
    def _echo(cls, value: str | int) -> str | int:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("echo numbers start at 1")
            return value
        if value.isdigit():
            return int(value)
        if not _ECHO_RULE.match(value):
            raise ValueError("expected first, last, an echo number or closest:<TE ms>")
        return value

    @field_validator("pybids_inputs")
    @classmethod
    def _has_magnitude(cls, value: dict[str, InputFilter]) -> dict[str, InputFilter]:
        if not {"mag", "megre_mag"} & set(value):
            raise ValueError("needs a 'mag' or 'megre_mag' component (the magnitude / T2*w / SWI image)")
        unknown = set(value) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; allowed: {', '.join(COMPONENTS)}")
        return value

    @model_validator(mode="after")
    def _dirs(self) -> "Config":
        if self.bids_dir is None or self.output_dir is None:
            return self
        bids = self.bids_dir.resolve()
        out = self.output_dir.resolve()
        if out == bids or bids in out.parents:
            raise ValueError("output_dir must not be inside bids_dir (inputs are never modified)")
        if out in bids.parents:
            raise ValueError("bids_dir must not be inside output_dir (cleaning the outputs would delete the inputs)")
        return self


def load_config(raw: dict[str, Any], need_dataset: bool = True) -> Config:
    """Validate a raw config mapping; raise :class:`InputError` with one line per problem.

    ``need_dataset`` False lets bids_dir and output_dir be missing (``snakemake train`` needs
    neither); :func:`require_dataset` checks them later.
    """
    if need_dataset:
        require_dataset(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise InputError("config: " + "; ".join(_describe(e) for e in err.errors())) from None


def require_dataset(raw: dict[str, Any] | Config) -> None:
    """Stop with one line unless both bids_dir and output_dir are set."""
    values = raw if isinstance(raw, dict) else raw.model_dump()
    missing = [key for key in ("bids_dir", "output_dir") if not values.get(key)]
    if missing:
        raise InputError(
            f"config: missing {', '.join(missing)}",
            fix="run with --config bids_dir=PATH output_dir=PATH",
        )


def _describe(error: Any) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check its spelling against config/config.yaml)"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"key '{key}' = {shown}: {error['msg']}"
