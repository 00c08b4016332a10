"""Table 3 analogue: unimodal baselines, attention fusion, OLM-T-MBT and
OLM-T-IRFB on the embedded MER sequences, emotion F1 and valence MSE.

Zong et al. (IJCAI 2024), Table 3, compares on MER-MULTI, for bimodal and
multimodal combinations of audio (A), video (V), text (T) and HOG (H):
the unimodal baselines (one transformer encoder each), attention late
fusion of the same encoders trained jointly ("Attention"), and OLM-Trans
with two mid fusions, the multimodal bottleneck transformer of Nagrani et
al. ("OLM-T-MBT") and IRFB ("OLM-T-IRFB"); the metrics are the weighted F1
of the emotions and the MSE of the valence. This script runs the same grid
on `keras_olm.embedded.mer_sequences` (generated feature sequences with
ragged lengths; audio dominant, text weakest) with the model of
`examples/mer_multi.py`: a 1-layer transformer `SequenceEncoder` per
modality (MBT: the same layer count inside the fusion, on 0-layer
encoders), a linear valence head on the fused feature, Adam. Every cell is
the mean ± std over the seeds (model initialization and batch order; the
data are the same). A combination's "best unimodal" row is the best of its
modalities' unimodal baselines (by F1; by MSE for the MSE column).

    KERAS_BACKEND=torch python benchmarks/fusion_ablation.py
    KERAS_BACKEND=torch python benchmarks/fusion_ablation.py --quick

The torch backend is the quick one for these small models on a CPU (no
per-model tracing). The full grid is 57 runs; its table and timings are in
`benchmarks/README.md`.
"""

import argparse
import importlib.util
import pathlib
import time

import keras
import numpy as np

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples/mer_multi.py"
NAMES = {"A": "audio", "V": "video", "T": "text", "H": "hog"}
COMBOS = ("A+V", "A+T", "V+T", "A+V+T", "A+V+T+H")
METHODS = {
    "attention fusion": ("attention", None),
    "OLM-T-MBT": ("mbt", "olm"),
    "OLM-T-IRFB": ("irfb", "olm"),
}


def load_example():
    spec = importlib.util.spec_from_file_location("mer_multi", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modalities_of(combo):
    return tuple(NAMES[c] for c in combo.split("+"))


def mean_std(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(results, unimodal, combos):
    """Rows: best unimodal baseline and the methods; columns: combos."""
    header = "| method | " + " | ".join(
        f"{c} F1 (↑) | {c} MSE (↓)" for c in combos
    )
    lines = [header + " |", "|---" * (1 + 2 * len(combos)) + "|"]
    row = []
    for c in combos:
        letters = c.split("+")
        best_f1 = max(letters, key=lambda m: np.mean(unimodal[m]["f1"]))
        best_mse = min(letters, key=lambda m: np.mean(unimodal[m]["mse"]))
        row.append(f"{mean_std(unimodal[best_f1]['f1'])} ({best_f1})")
        row.append(f"{mean_std(unimodal[best_mse]['mse'])} ({best_mse})")
    lines.append("| best unimodal | " + " | ".join(row) + " |")
    for method in METHODS:
        row = []
        for c in combos:
            r = results[(method, c)]
            row += [mean_std(r["f1"]), mean_std(r["mse"])]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def unimodal_table(unimodal):
    lines = ["| modality | F1 (↑) | MSE (↓) |", "|---|---|---|"]
    for letter, r in unimodal.items():
        lines.append(
            f"| {NAMES[letter]}-only | {mean_std(r['f1'])} | "
            f"{mean_std(r['mse'])} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="A+V only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch backend: intra-op threads (1 is quickest on 2 cores)",
    )
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument(
        "--combos",
        default=",".join(COMBOS),
        help="comma-separated, e.g. A+V,A+V+T+H (H: HOG)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    combos = args.combos.split(",")
    if args.quick:
        combos, args.seeds, args.epochs = ["A+V"], 1, 2
        args.num_train, args.num_test = 200, 100
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)
    letters = sorted({c for combo in combos for c in combo.split("+")})
    letters = [c for c in "AVTH" if c in letters]
    example = load_example()
    example_args = example.parse_args(
        [
            "--modalities=" + ",".join(NAMES[c] for c in letters),
            f"--num-train={args.num_train}",
            f"--num-test={args.num_test}",
            f"--epochs={args.epochs}",
            f"--hidden-dim={args.hidden_dim}",
            f"--learning-rate={args.learning_rate}",
        ]
    )
    data = example.load_data(example_args)
    seeds = range(args.seeds)
    start = time.perf_counter()

    def run(modalities, fusion, balancer, label):
        scores = {"f1": [], "mse": []}
        for seed in seeds:
            t = time.perf_counter()
            r = example.train_and_evaluate(
                data, modalities, fusion, balancer, example_args, seed
            )
            scores["f1"].append(r["f1"]["fused"])
            scores["mse"].append(r["valence_mse"])
            print(
                f"{label} seed {seed}: F1 {r['f1']['fused']:.3f} MSE "
                f"{r['valence_mse']:.3f} ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
        return scores

    unimodal = {
        c: run((NAMES[c],), "concat", None, f"{NAMES[c]}-only") for c in letters
    }
    results = {}
    for combo in combos:
        for method, (fusion, balancer) in METHODS.items():
            results[(method, combo)] = run(
                modalities_of(combo), fusion, balancer, f"{method} {combo}"
            )
    minutes = (time.perf_counter() - start) / 60
    print()
    print(
        f"MER sequences ({len(data['train'][1]['label'])} train, "
        f"{len(data['held_out'][1]['label'])} held_out, "
        f"{len(data['test'][1]['label'])} test clips), {args.epochs} epochs, "
        f"{args.seeds} seeds, backend {keras.backend.backend()}, "
        f"{minutes:.1f} min"
    )
    print()
    print(unimodal_table(unimodal))
    print()
    print(table(results, unimodal, combos))
    return results, unimodal


if __name__ == "__main__":
    main()
