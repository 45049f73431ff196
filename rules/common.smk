# Configuration, input discovery and the helpers every rule file uses.
import snakebids
from snakebids import bids

from cmbflow.config import load_config, require_dataset
from cmbflow.errors import InputError
from cmbflow.inputs import collect_subject_inputs

snakebids.set_bids_spec("v0_15_0")  # BIDS entity order (part- before desc-)
CFG = load_config(config, need_dataset=False)  # snakemake train needs no dataset
OUT = str(CFG.output_dir)


def _discover():
    dataset = snakebids.generate_inputs(
        bids_dir=CFG.bids_dir,
        pybids_inputs={name: spec.model_dump() for name, spec in CFG.pybids_inputs.items()},
        participant_label=CFG.participant_label or None,
        exclude_participant_label=CFG.exclude_participant_label or None,
        pybidsdb_dir=CFG.pybidsdb_dir,
    )
    rows = {name: [] for name in dataset}
    for name, comp in dataset.items():
        for values in zip(*comp.zip_lists.values()):
            entities = dict(zip(comp.zip_lists, values))
            rows[name].append(entities | {"path": comp.path.format(**entities)})
    subjects = collect_subject_inputs(rows, CFG.echo)
    if not subjects:
        wanted = f" for participant(s) {', '.join(CFG.participant_label)}" if CFG.participant_label else ""
        raise InputError(
            f"no magnitude images found{wanted}",
            path=CFG.bids_dir,
            fix="check bids_dir, participant_label and the pybids_inputs filters in the config",
        )
    return {s.label: s for s in subjects}


SUBJECTS = _discover() if CFG.bids_dir else {}
HAS_SESSIONS = any(s.session for s in SUBJECTS.values())
# Output wildcards: one job set per subject (and session); sessions only when the data have them.
WILDCARDS = {"subject": "{subject}"} | ({"session": "{session}"} if HAS_SESSIONS else {})


wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    session="[a-zA-Z0-9]+",


def subject_of(wildcards):
    """The discovered inputs of the subject/session a job is for."""
    label = f"sub-{wildcards.subject}" + (f"_ses-{wildcards.session}" if HAS_SESSIONS else "")
    return SUBJECTS[label]


def out(datatype="anat", **entities):
    """A per-subject derivative path (snakebids naming) under output_dir."""
    return bids(root=OUT, datatype=datatype, **WILDCARDS, **entities)


def has_phase(wildcards):
    return subject_of(wildcards).phase is not None


def candidate_inputs(wildcards):
    """The bias-corrected magnitude, plus the high-pass phase when the subject has phase.

    Not the SWI: its phase mask darkens a microbleed's dipole lobes along B0, so bleeds look
    elongated and the candidates multiply (measured: see benchmarks/RESULTS.md).
    """
    inputs = {"image": rules.bias_correct.output.mag}
    if has_phase(wildcards):
        inputs["hpphase"] = rules.phase_preproc.output.hpphase
    return inputs


def expand_subjects(pattern):
    """A per-subject path for every discovered subject/session."""
    return [pattern.format(**s.wildcards) for s in SUBJECTS.values()]


def subject_file(ext, folder=""):
    """A per-subject file named sub-X[_ses-Y]{ext} in output_dir/folder (a report page at the top)."""
    return f"{OUT}/{folder}sub-{{subject}}" + ("_ses-{session}" if HAS_SESSIONS else "") + ext


def _per_subject(folder, rule_name, ext):
    return subject_file(ext, folder=f"{folder}/{rule_name}/")


def log_path(rule_name):
    """Per-subject log file of a rule."""
    return _per_subject("logs", rule_name, ".log")


def benchmark_path(rule_name):
    """Per-subject wall time and peak memory of a rule (Snakemake's benchmark TSV)."""
    return _per_subject("benchmarks", rule_name, ".tsv")


def label(wildcards):
    return subject_of(wildcards).label


def analysis_outputs(wildcards):
    """Targets of a normal run; stops here, with one line, when bids_dir or output_dir is missing."""
    require_dataset(CFG)
    return [*rules.dataset_description.output, *rules.cohort.output, *rules.cohort_report.output,
            *expand_subjects(rules.subject_report.output.html)]


def phase_report_inputs(wildcards):
    """The SWI and high-pass phase, shown beside the magnitude when the subject has phase."""
    if not has_phase(wildcards):
        return {}
    return {"swi": rules.phase_preproc.output.swi, "hpphase": rules.phase_preproc.output.hpphase}


def report_sources(wildcards):
    """The input files named on the page."""
    subject = subject_of(wildcards)
    return {"magnitude": str(subject.mag), "phase": subject.phase and str(subject.phase),
            "T1w": subject.t1w and str(subject.t1w)}


def qc_figure(desc, subcategory, caption, **entities):
    """A per-subject QC figure, listed in `snakemake --report` under its subject (and session)."""
    return report(
        out(datatype="figures", desc=desc, suffix="T2starw.png", **entities),
        caption=f"../report/{caption}.rst",
        category="Subject QC",
        subcategory=subcategory,
        labels=dict(WILDCARDS),
    )
