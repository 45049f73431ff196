# The Microbleed Anatomical Rating Scale regions as one MNI label volume, built once per run;
# detect looks each candidate up in it.
from cmbflow.mars import ATLAS_NAME, ATLAS_TABLE


rule mars_atlas:
    output:
        image=f"{OUT}/atlas/{ATLAS_NAME}",
        tsv=f"{OUT}/atlas/{ATLAS_TABLE}",
    log:
        f"{OUT}/logs/mars_atlas.log",
    benchmark:
        f"{OUT}/benchmarks/mars_atlas.tsv",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/mars_atlas.py"
