# cmbflow: cerebral microbleed detection for BIDS cohorts.
#   snakemake --cores N --config bids_dir=PATH output_dir=PATH
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The library in src/ serves every job, installed or not, also in --use-conda environments.
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/anat.smk"
include: "rules/phase.smk"
include: "rules/candidates.smk"
include: "rules/detect.smk"
include: "rules/group.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/dataset_description.json",
        f"{OUT}/group/cohort_summary.csv",
        f"{OUT}/group/cohort_detections.csv",
