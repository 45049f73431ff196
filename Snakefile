# cmbflow: cerebral microbleed detection for BIDS cohorts.
#   snakemake --cores N --config bids_dir=PATH output_dir=PATH
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The library in src/ serves the workflow whether or not it is installed (jobs find it through
# the workflow_scripts/cmbflow link, as --use-conda environments do not install it).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"  # snakemake --report: the QC figures of rules/qc.smk


container: "docker://ghcr.io/cmbflow/cmbflow:0.2.0"  # --software-deployment-method apptainer: docs/install.md


include: "rules/common.smk"
include: "rules/anat.smk"
include: "rules/phase.smk"
include: "rules/atlas.smk"
include: "rules/detect.smk"
include: "rules/train.smk"
include: "rules/qc.smk"
include: "rules/group.smk"
include: "rules/longitudinal.smk"
include: "rules/partial.smk"


rule participant:  # the selected subjects' outputs: cmbflow ... participant --participant-label
    input:
        participant_outputs,


rule group:  # the cohort tables and report: cmbflow ... group
    input:
        group_outputs,


rule all:
    default_target: True
    input:
        rules.dataset_description.output,
        participant_outputs,
        group_outputs,
