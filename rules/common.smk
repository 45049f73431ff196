# Configuration, input discovery and the helpers every rule file uses.
import snakebids
from snakebids import bids

from cmbflow.config import load_config, require_dataset
from cmbflow.derivatives import write_run_config
from cmbflow.errors import InputError
from cmbflow.inputs import collect_subject_inputs, find_files
from cmbflow.ratings import ratings_files

snakebids.set_bids_spec("v0_15_0")  # BIDS entity order (part- before desc-)
CFG = load_config(config, need_dataset=False)  # snakemake train needs no dataset
OUT = str(CFG.output_dir)
WORK = str(CFG.work_dir or f"{OUT}/work")


def _discover():
    subjects = collect_subject_inputs(find_files(CFG), CFG.echo, CFG.select.model_dump())
    if not subjects:
        wanted = f" for participant(s) {', '.join(CFG.participant_label)}" if CFG.participant_label else ""
        raise InputError(
            f"no magnitude images found{wanted}",
            path=CFG.bids_dir,
            fix="check bids_dir, participant_label and the pybids_inputs filters in the config",
        )
    for subject in subjects:  # which of several scans each result comes from, on every start
        if subject.choice:
            print(f"cmbflow: {subject.label}: {subject.choice}", file=sys.stderr)
    return {s.label: s for s in subjects}


SUBJECTS = _discover() if CFG.bids_dir else {}

# A subject/session appears in paths as a folder (sub-02/ses-01/) and in file names
# (sub-02_ses-01_...). Snakemake needs the outputs, log and benchmark of a rule to hold the same
# wildcards, so where a dataset mixes subjects with and without sessions, the session is two
# wildcards that may be empty, ses_dir (/ses-01 or empty) and ses_name (_ses-01 or empty), and a
# session's files outside the subject folders (logs, benchmarks, report page) go in a ses-01/
# subfolder. Datasets with sessions everywhere or nowhere keep plain names (cmbflow.inputs
# SubjectInputs.wildcards has the values for all three).
_SESSIONS = {s.session is not None for s in SUBJECTS.values()}
if _SESSIONS == {True, False}:
    FOLDER, NAME, FLAT = "sub-{subject}{ses_dir}", "sub-{subject}{ses_name}", "{ses_dir}"
elif _SESSIONS == {True}:
    FOLDER, NAME, FLAT = "sub-{subject}/ses-{session}", "sub-{subject}_ses-{session}", ""
else:
    FOLDER, NAME, FLAT = "sub-{subject}", "sub-{subject}", ""


wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    session="[a-zA-Z0-9]+",
    ses_dir="(?:/ses-[a-zA-Z0-9]+)?",
    ses_name="(?:_ses-[a-zA-Z0-9]+)?",


def subject_of(wildcards):
    """The discovered inputs of the subject/session a job is for."""
    return SUBJECTS[NAME.format(**wildcards)]


def out(datatype="anat", **entities):
    """A per-subject derivative path (snakebids naming) under output_dir."""
    return f"{OUT}/{FOLDER}/{datatype}/{bids(prefix=NAME, **entities)}"


def work(datatype="anat", **entities):
    """A per-subject intermediate path under work_dir (for temp() files)."""
    return f"{WORK}/{FOLDER}/{datatype}/{bids(prefix=NAME, **entities)}"


def has_phase(wildcards):
    return subject_of(wildcards).phase is not None


def candidate_inputs(wildcards):
    """The bias-corrected magnitude, plus the high-pass phase when the subject has phase.

    Not the SWI: its phase mask darkens a microbleed's dipole lobes along B0, so bleeds look
    elongated and the candidates multiply (measured: see benchmarks/RESULTS.md).
    """
    inputs = {"image": rules.anatomy.output.mag}
    if has_phase(wildcards):
        inputs["hpphase"] = rules.phase_preproc.output.hpphase
    return inputs


def followed_subjects():
    """Subjects with two sessions or more, and their sessions (rules/longitudinal.smk). A function:
    at the group level, rules/group.smk keeps only the finished sessions in SUBJECTS."""
    sessions = {}
    for s in SUBJECTS.values():
        if s.session:
            sessions.setdefault(s.subject, []).append(s)
    return {subject: found for subject, found in sessions.items() if len(found) >= 2}


def sessions_of(pattern):
    """A per-session path, for every session of the subject a job is for."""
    return lambda wildcards: [pattern.format(**s.wildcards) for s in followed_subjects()[wildcards.subject]]


def expand_subjects(pattern):
    """A per-subject path for every discovered subject/session."""
    return [pattern.format(**s.wildcards) for s in SUBJECTS.values()]


def subject_file(ext, folder=""):
    """A per-subject file named sub-X[_ses-Y]{ext} in output_dir/folder (a report page at the top)."""
    return f"{os.path.join(OUT, folder).rstrip('/')}{FLAT}/{NAME}{ext}"


def _per_subject(folder, rule_name, ext):
    return subject_file(ext, folder=f"{folder}/{rule_name}")


def log_path(rule_name):
    """Per-subject log file of a rule."""
    return _per_subject("logs", rule_name, ".log")


def benchmark_path(rule_name):
    """Per-subject wall time and peak memory of a rule (Snakemake's benchmark TSV)."""
    return _per_subject("benchmarks", rule_name, ".tsv")


def label(wildcards):
    return subject_of(wildcards).label


def participant_outputs(wildcards):
    """Every selected subject's outputs (its report needs all of them, and with sessions its
    longitudinal table); stops here, with one line, when bids_dir or output_dir is missing."""
    require_dataset(CFG)
    longitudinal = [rules.longitudinal.output.tsv.format(subject=subject) for subject in followed_subjects()]
    return expand_subjects(rules.subject_report.output.html) + longitudinal


def group_outputs(wildcards):
    """The cohort tables and report, and with sessions the longitudinal table (rules/longitudinal.smk)."""
    require_dataset(CFG)
    return [*rules.cohort.output, *rules.cohort_report.output, *(rules.cohort_longitudinal.output if followed_subjects() else [])]


def ratings_inputs(wildcards):
    """Every subject's ratings files: a change in them reruns the cohort tables, and nothing else."""
    if CFG.ratings_dir is None:
        return []
    return [path for label in SUBJECTS for path in ratings_files(CFG.ratings_dir, label)]


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


def _report_labels(wildcards):
    subject = subject_of(wildcards)
    return {"subject": subject.subject} | ({"session": subject.session or ""} if True in _SESSIONS else {})


def qc_figure(desc, subcategory, caption, **entities):
    """A per-subject QC figure, listed in `snakemake --report` under its subject (and session)."""
    return report(
        out(datatype="figures", desc=desc, suffix="T2starw.png", **entities),
        caption=f"../report/{caption}.rst",
        category="Subject QC",
        subcategory=subcategory,
        labels=_report_labels,
    )


onstart:  # once per run, in the main process (not per job, not on dry runs)
    if CFG.bids_dir:
        write_run_config(CFG.model_dump(mode="json"), f"{OUT}/logs")
