"""Stage-2 throughput: candidate patch extraction and classification, in candidates per second.

    python benchmarks/bench_classifier.py [--candidates 2000] [--device cpu [cuda]] [--model-dir DIR]
                                          [--repeats 3] [--threads T] [--seed 0]

Simulates one standard-preset subject in memory, computes its high-pass phase, places N random
candidate centres inside the brain mask and times ``candidate_patches`` (magnitude + phase,
NumPy/SciPy on the CPU whatever the device), ``Classifier.predict`` on each device, and the two in
sequence. Each figure is the median of ``--repeats`` timed runs after one untimed warm-up. The
phase model is used; with no trained model (``--model-dir`` or the packaged model card) an
untrained network of the same architecture is timed, since throughput does not depend on weights.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cmbflow.image import ijk_to_xyz, voxel_sizes
from cmbflow.model import MODEL_CARD, CandidateNet, Classifier, ModelSpec, load_classifier, packaged_model_dir
from cmbflow.patches import candidate_patches
from cmbflow.phase import highpass, phase_to_radians, unwrap
from cmbflow.simulate.params import sample_subject_params
from cmbflow.simulate.subject import simulate_subject


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls after one untimed warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def classifier(model_dir: Path | None) -> tuple[Classifier, str]:
    """The phase classifier to time, and where it came from."""
    if model_dir is not None:
        return load_classifier(model_dir, has_phase=True), f"trained ({model_dir})"
    if (packaged_model_dir() / MODEL_CARD).is_file():
        return load_classifier(None, has_phase=True), f"trained (packaged, {packaged_model_dir()})"
    untrained = Classifier(CandidateNet(ModelSpec(2)).eval(), 0.5, "phase")
    return untrained, "UNTRAINED CandidateNet(ModelSpec(2)) (no model card found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"], default=["cpu"])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    rng = np.random.default_rng([args.seed, 1])
    params = sample_subject_params(rng, "standard")
    subj = simulate_subject(params, rng)
    mask = subj.brain_mask > 0
    # The standard preset stores phase as float radians.
    hp_phase = highpass(unwrap(phase_to_radians(subj.phase, "rad"), mask), mask, voxel_sizes(subj.affine))
    print(f"simulated subject {subj.magnitude.shape} at {np.round(voxel_sizes(subj.affine), 2).tolist()} mm "
          f"({params.orientation}), high-pass phase included, in {time.perf_counter() - start:.1f} s")

    # Random centres inside the brain, jittered within their voxel (candidates are not on voxel centres).
    centre_rng = np.random.default_rng([args.seed, 2])
    voxels = np.stack(np.nonzero(mask), axis=1)[centre_rng.integers(0, int(mask.sum()), args.candidates)]
    centres = ijk_to_xyz(subj.affine, voxels + centre_rng.uniform(-0.5, 0.5, voxels.shape))
    model, source = classifier(args.model_dir)
    print(f"model: {source}; {sum(p.numel() for p in model.model.parameters()):,} parameters")
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.candidates} candidates, median of {args.repeats} runs after a warm-up\n")

    def extract() -> np.ndarray:
        return candidate_patches(subj.magnitude, mask, subj.affine, centres, hp_phase,
                                 paramagnetic_sign=params.paramagnetic_sign, context_mm=model.model.spec.context_mm)

    patches = extract()
    n = len(patches)
    # Stage-1 features are read from the candidates table, not computed here: their values do not
    # change the cost of classification.
    features = np.zeros((n, model.model.spec.n_features), dtype=np.float32)
    rows = [("patch extraction (CPU)", "cpu", median_seconds(extract, args.repeats))]
    for device in args.device:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        label = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        rows.append(("classification", label, median_seconds(lambda: model.predict(patches, features, device), args.repeats)))
        rows.append(("extraction + classification", label,
                     median_seconds(lambda: model.predict(extract(), features, device), args.repeats)))
    print("| step | device | median s | candidates/s |\n|---|---|---|---|")
    for step, device, seconds in rows:
        print(f"| {step} | {device} | {seconds:.3f} | {n / seconds:,.0f} |")


if __name__ == "__main__":
    main()
