# Training the stage-2 classifier: snakemake train --cores N
# Simulated cohorts go through the workflow's own stage 1 (its steps in one job per scan:
# cmbflow.stages.run_stage1), so the network is trained on the candidates it will really be
# shown; a validation cohort from another seed picks each model's threshold and gives the
# figures of the model card. Nothing here runs for a normal analysis.
TRAIN = str(CFG.training.dir)
COHORTS = {
    "train": (CFG.training.train_subjects, CFG.training.train_seed, "training"),
    "validation": (CFG.training.validation_subjects, CFG.training.validation_seed, "diverse"),
}
# Jobs run the library from this checkout, installed or not.
CMBFLOW = f"PYTHONPATH={workflow.basedir}/src {sys.executable} -m cmbflow.cli"

# The simulator numbers subjects from 001.
STAGE1_SCANS = {
    cohort: expand(f"{TRAIN}/{cohort}/stage1/sub-{{subject}}", subject=[f"{i:03d}" for i in range(1, n + 1)])
    for cohort, (n, _, _) in COHORTS.items()
}


wildcard_constraints:
    cohort="train|validation",


rule simulate_cohort:
    output:
        directory(f"{TRAIN}/{{cohort}}/bids"),
    params:
        cmbflow=CMBFLOW,
        n=lambda wc: COHORTS[wc.cohort][0],
        seed=lambda wc: COHORTS[wc.cohort][1],
        preset=lambda wc: COHORTS[wc.cohort][2],
    log:
        f"{TRAIN}/logs/simulate_cohort/{{cohort}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cmbflow.yaml"
    shell:
        "{params.cmbflow} simulate {output} --subjects {params.n} --seed {params.seed} --preset {params.preset} > {log} 2>&1"


rule stage1_scan:
    input:
        bids=rules.simulate_cohort.output[0],
    output:
        directory(f"{TRAIN}/{{cohort}}/stage1/sub-{{subject}}"),
    params:
        label="sub-{subject}",
        stage1_dir=lambda wc, output: os.path.dirname(output[0]),
        echo=CFG.echo,
        phase=CFG.phase.model_dump(),
        candidates=CFG.candidates.model_dump(),
        device=CFG.device,
    log:
        f"{TRAIN}/logs/stage1_scan/{{cohort}}_sub-{{subject}}.log",
    threads: 1  # ITK is single-threaded (rules/anat.smk); FRST gains little from a second core
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/stage1_scan.py"


rule training_patches:
    input:
        stage1=STAGE1_SCANS["train"],
        bids=f"{TRAIN}/train/bids",
    output:
        f"{TRAIN}/train/patches.npz",
    params:
        stage1_dir=lambda wc, input: os.path.dirname(input.stage1[0]),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
        context_mm=CFG.training.params.context_mm,
    log:
        f"{TRAIN}/logs/training_patches.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/training_patches.py"


rule train_classifier:
    input:
        rules.training_patches.output,
    output:
        phase=f"{TRAIN}/model/phase.safetensors",
        magnitude=f"{TRAIN}/model/magnitude.safetensors",
        history=f"{TRAIN}/model/training_history.json",
    params:
        train=CFG.training.params.model_dump(),
        members=CFG.training.members,
        device=CFG.device,
    log:
        f"{TRAIN}/logs/train_classifier.log",
    threads: 8  # capped at --cores on one machine; what a cluster job asks for
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/train_classifier.py"


rule validate_classifier:
    input:
        phase=rules.train_classifier.output.phase,
        magnitude=rules.train_classifier.output.magnitude,
        history=rules.train_classifier.output.history,
        stage1=STAGE1_SCANS["validation"],
        bids=f"{TRAIN}/validation/bids",
    output:
        card=f"{TRAIN}/model/model_card.json",
        card_md=f"{TRAIN}/model/MODEL_CARD.md",
        froc=f"{TRAIN}/model/froc.png",
    params:
        stage1_dir=lambda wc, input: os.path.dirname(input.stage1[0]),
        training=CFG.training.model_dump(mode="json"),
        paramagnetic_sign=CFG.phase.paramagnetic_sign,
        device=CFG.device,
    log:
        f"{TRAIN}/logs/validate_classifier.log",
    threads: 8  # capped at --cores on one machine; what a cluster job asks for
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/cmbflow.yaml"
    script:
        "../workflow_scripts/validate_classifier.py"


rule train:
    input:
        rules.validate_classifier.output,
