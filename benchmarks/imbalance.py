"""How imbalanced the embedded datasets are, measured as the field does.

Studies of modality imbalance (OGM-GE, Peng et al. 2022; "On Uni-Modal
Feature Learning in Supervised Multi-Modal Learning", Du et al. 2023)
show three things on their audio-visual and RGB-D sets: the dominant
modality learns faster; after joint training the weak modality's encoder
is worse than the same encoder trained alone (a linear probe on it scores
below the unimodal model); and an ensemble of separately trained unimodal
models is no worse than joint training. This script measures the same on
the two embedded stand-ins (data, splits and encoders of
`embedded_data.py`, shared with `compare.py`).

Per dataset and seed:

- `<modality> alone`: one encoder and its classifier (a one-modality
  `BalancedMultimodalModel`, `balancer=None`);
- `Concat`: plain joint training (`LateFusion("concat")`,
  `balancer=None`: the fused loss trains the encoders; the unimodal heads
  are linear probes on the detached features of the jointly trained
  encoders), scored on its fused head;
- `<modality> probe (concat)`: those unimodal heads of the `Concat` model,
  at the `Concat` checkpoint;
- `Ensemble`: the average of the `alone` models' softmax probabilities.

Every model trains on the same pool (the training split less `val` and
`held_out`, as in `compare.py`) for `--epochs` epochs; the checkpoint is
the epoch with the best validation accuracy of the model's fused head
(for a one-modality model, its only head) and is scored once on test.
Learning speed comes from validation accuracy after each epoch: after
epochs 1, 2 and 3, and the first epoch that reaches 90% of the best
validation accuracy of the run.

The checks (paired per seed, mean ± std over seeds):

- (a) the dominant modality (the higher `alone` test accuracy) learns
  faster: its `alone` model has the higher validation accuracy after
  epoch 1 and reaches 90% of its best no later than the weak one;
- (b) `weak alone - weak probe (concat)` is at least 0.05;
- (c) `Ensemble - Concat` is at least 0.

    KERAS_BACKEND=tensorflow python benchmarks/imbalance.py --write-readme
    python benchmarks/imbalance.py --datasets digits --seeds 0 --epochs 5

Prints the markdown tables and, with `--write-readme`, replaces the
`## imbalance.py` section of `benchmarks/README.md`.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

import keras_olm
from keras_olm.comparison import BestCheckpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embedded_data import DATASET_TITLES  # noqa: E402
from embedded_data import DATASETS  # noqa: E402
from embedded_data import add_data_arguments  # noqa: E402
from embedded_data import cnn_encoder  # noqa: E402
from embedded_data import load_dataset  # noqa: E402
from embedded_data import make_splits  # noqa: E402
from embedded_data import write_readme  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
README_HEADING = "## `imbalance.py`"
CURVE_EPOCHS = (1, 2, 3)


def _inputs(split, modalities):
    x, y = split
    return {m: x[m] for m in modalities}, y


def _accuracy(logits, y):
    return float(np.mean(np.asarray(logits).argmax(-1) == y))


def _softmax(logits):
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def refit_probe(encoder, splits, modality, batch_size=256):
    """Test accuracy of a linear probe refit on a frozen encoder.

    Features of the pool, `val` and test come from `encoder` in
    inference mode; a standardised logistic regression is fit on the
    pool for each `C` in (0.01, 0.1, 1) and the one with the best `val`
    accuracy is scored on test.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = {
        k: keras.ops.convert_to_numpy(
            encoder.predict(splits[k][0][modality], batch_size, verbose=0)
        )
        for k in ("pool", "val", "test")
    }
    best = (-1.0, None)
    for c in (0.01, 0.1, 1.0):
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=2000)
        )
        clf.fit(feats["pool"], splits["pool"][1])
        score = clf.score(feats["val"], splits["val"][1])
        if score > best[0]:
            best = (score, clf)
    return float(best[1].score(feats["test"], splits["test"][1]))


def train(splits, modalities, num_classes, args, seed):
    """Trains `modalities` jointly (or one alone) with `balancer=None`.

    Returns:
        A dict: `test` (test accuracy of every head at the checkpoint),
        `probs` (test probabilities of the fused head), `val` and
        `train` (per-epoch validation and training accuracy of every
        head), `best_epoch` and `seconds`.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    encoders = {
        m: cnn_encoder(args.width, args.stages, name=f"{m}_encoder")
        for m in modalities
    }
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes, balancer=None
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        jit_compile=args.jit_compile,
    )
    best = BestCheckpoint(_inputs(splits["val"], modalities))
    x, y = _inputs(splits["pool"], modalities)
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[best],
        verbose=0,
    )
    model.set_weights(best.best_weights)
    test_x, test_y = _inputs(splits["test"], modalities)
    logits = model.predict_heads(test_x, verbose=0)
    refit = {}
    if len(modalities) > 1:
        refit = {
            m: refit_probe(model.encoders[m], splits, m, args.batch_size)
            for m in modalities
        }
    return {
        "test": {h: _accuracy(v, test_y) for h, v in logits.items()},
        "refit": refit,
        "probs": _softmax(logits["fused"]),
        "val": best.history,
        "train": best.train_history,
        "best_epoch": best.best_epoch,
        "seconds": time.perf_counter() - start,
    }


def _epoch_to(curve, fraction=0.9):
    """First epoch (1-based) whose value reaches `fraction` of the best."""
    curve = np.asarray(curve)
    return int(np.argmax(curve >= fraction * curve.max())) + 1


def _curve_summary(val, train):
    """Validation accuracy after `CURVE_EPOCHS`, epoch to 90%, training."""
    out = {f"val@{e}": val[e - 1] for e in CURVE_EPOCHS if e <= len(val)}
    out["epoch90"] = _epoch_to(val)
    out.update(
        {f"train@{e}": train[e - 1] for e in CURVE_EPOCHS if e <= len(train)}
    )
    return out


def run_dataset(name, args, log):
    """Every model of one dataset for every seed.

    Returns:
        A dict: `modalities`, `sizes` (of the splits), `root` (the
        generated dataset) and `runs`, a list (one per seed) of dicts from
        row title to `{"acc": test accuracy, ...curve summary}`.
    """
    data = load_dataset(name, args.dataset_size.get(name))
    splits = make_splits(data, max_train=args.max_train, max_eval=args.max_eval)
    modalities, num_classes = data["modalities"], data["num_classes"]
    sizes = {k: int(len(v[1])) for k, v in splits.items()}
    log(f"{name}: {sizes}, modalities {modalities}, {num_classes} classes")
    test_y = splits["test"][1]
    runs = []
    for seed in args.seeds:
        rows = {}
        alone_probs = []
        for m in modalities:
            r = train(splits, [m], num_classes, args, seed)
            alone_probs.append(r["probs"])
            rows[f"{m} alone"] = {
                "acc": r["test"]["fused"],
                "best_epoch": r["best_epoch"],
                **_curve_summary(r["val"]["fused"], r["train"]["fused"]),
            }
            log(
                f"  seed {seed} {m} alone: test {r['test']['fused']:.3f}, "
                f"val {np.round(r['val']['fused'], 3).tolist()} "
                f"({r['seconds']:.0f} s)"
            )
        r = train(splits, modalities, num_classes, args, seed)
        rows["Concat"] = {
            "acc": r["test"]["fused"],
            "best_epoch": r["best_epoch"],
            **_curve_summary(r["val"]["fused"], r["train"]["fused"]),
        }
        for m in modalities:
            rows[f"{m} probe (concat)"] = {
                "acc": r["test"][m],
                **_curve_summary(r["val"][m], r["train"][m]),
            }
            rows[f"{m} probe (concat, refit)"] = {"acc": r["refit"][m]}
        log(
            f"  seed {seed} concat: test {r['test']} val fused "
            f"{np.round(r['val']['fused'], 3).tolist()} "
            f"({r['seconds']:.0f} s)"
        )
        ensemble = np.mean(alone_probs, axis=0)
        rows["Ensemble"] = {"acc": _accuracy(ensemble, test_y)}
        log(f"  seed {seed} ensemble: test {rows['Ensemble']['acc']:.3f}")
        runs.append(rows)
    return {
        "modalities": modalities,
        "sizes": sizes,
        "root": os.path.basename(data["root"]),
        "runs": runs,
    }


# --- reporting ---------------------------------------------------------


def _mean_std(values, digits=3, signed=False):
    values = np.asarray(values, float)
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return f"{values.mean():{sign}.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def dominant_and_weak(result):
    """Modalities ordered by mean `alone` test accuracy, best first."""
    mods = result["modalities"]
    mean = {
        m: np.mean([run[f"{m} alone"]["acc"] for run in result["runs"]])
        for m in mods
    }
    ordered = sorted(mods, key=lambda m: -mean[m])
    return ordered[0], ordered[-1]


def format_table(result):
    """One dataset's rows: test accuracy and the learning curves."""
    mods = result["modalities"]
    runs = result["runs"]
    titles = [f"{m} alone" for m in mods] + ["Concat"]
    titles += [f"{m} probe (concat)" for m in mods]
    titles += [f"{m} probe (concat, refit)" for m in mods] + ["Ensemble"]
    keys = [f"val@{e}" for e in CURVE_EPOCHS] + ["epoch90"]
    header = (
        "| model | test acc | "
        + " | ".join(f"val acc, epoch {e}" for e in CURVE_EPOCHS)
        + " | epoch to 90% of best val | "
        + " | ".join(f"train acc, epoch {e}" for e in CURVE_EPOCHS)
        + " |"
    )
    lines = [header, "|---" * (3 + 2 * len(CURVE_EPOCHS)) + "|"]
    for title in titles:
        line = f"| {title} | {_mean_std([r[title]['acc'] for r in runs])} |"
        for key in keys + [f"train@{e}" for e in CURVE_EPOCHS]:
            values = [r[title].get(key) for r in runs]
            if any(v is None for v in values):
                line += " – |"
            elif key == "epoch90":
                line += f" {_mean_std(values, 1)} |"
            else:
                line += f" {_mean_std(values)} |"
        lines.append(line)
    return "\n".join(lines)


def checks(result):
    """The three checks of the module docstring, paired per seed."""
    dom, weak = dominant_and_weak(result)
    runs = result["runs"]

    def diff(a, b, key="acc"):
        return [r[a][key] - r[b][key] for r in runs]

    out = {"dominant": dom, "weak": weak}
    for e in CURVE_EPOCHS:
        out[f"a_train@{e}"] = diff(
            f"{dom} alone", f"{weak} alone", f"train@{e}"
        )
    out["a_epoch90"] = diff(f"{weak} alone", f"{dom} alone", "epoch90")
    out["b_gap"] = diff(f"{weak} alone", f"{weak} probe (concat)")
    out["b_refit_gap"] = diff(f"{weak} alone", f"{weak} probe (concat, refit)")
    out["c_gap"] = diff("Ensemble", "Concat")
    out["a"] = bool(all(np.mean(out[f"a_train@{e}"]) > 0 for e in CURVE_EPOCHS))
    out["b"] = bool(np.mean(out["b_gap"]) >= 0.05)
    out["b_refit"] = bool(np.mean(out["b_refit_gap"]) >= 0.05)
    out["c"] = bool(np.mean(out["c_gap"]) >= 0)
    return out


def format_checks(all_results):
    """The checks, one row per dataset."""
    train_cols = " | ".join(
        f"(a) train acc, epoch {e}, dominant - weak" for e in CURVE_EPOCHS
    )
    lines = [
        f"| dataset | dominant / weak | {train_cols} | epochs to 90% of "
        "best val acc, weak - dominant | (b) weak alone - weak probe "
        "(concat) | (b) weak alone - weak probe (concat, refit) | "
        "(c) Ensemble - Concat |",
        "|---" * (6 + len(CURVE_EPOCHS)) + "|",
    ]

    def cell(values, ok=None, digits=3):
        text = _mean_std(values, digits, signed=True)
        if ok is None:
            return text
        return f"{text} ({'yes' if ok else '**no**'})"

    for name, result in all_results.items():
        c = checks(result)
        line = (
            f"| {DATASET_TITLES.get(name, name)} | {c['dominant']} / "
            f"{c['weak']} |"
        )
        for e in CURVE_EPOCHS:
            values = c[f"a_train@{e}"]
            line += f" {cell(values, np.mean(values) > 0)} |"
        line += (
            f" {cell(c['a_epoch90'], digits=1)} |"
            f" {cell(c['b_gap'], c['b'])} |"
            f" {cell(c['b_refit_gap'], c['b_refit'])} |"
            f" {cell(c['c_gap'], c['c'])} |"
        )
        lines.append(line)
    return "\n".join(lines)


def format_all(all_results):
    parts = [format_checks(all_results)]
    for name, result in all_results.items():
        sizes = result["sizes"]
        parts.append(
            f"{DATASET_TITLES.get(name, name)} (`{result['root']}`; pool "
            f"{sizes['pool']}, val {sizes['val']}, test {sizes['test']}; "
            f"{len(result['runs'])} seeds):\n\n{format_table(result)}"
        )
    return "\n\n".join(parts)


def readme_section(tables, args, wall):
    seeds = " ".join(str(s) for s in args.seeds)
    return f"""{README_HEADING}: the imbalance of the embedded sets

Each modality alone, plain joint training with concatenation
(`balancer=None`; the unimodal heads are then linear probes on the
detached features of the jointly trained encoders: the `probe (concat)`
rows), and the ensemble of the separately trained unimodal models
(average of softmax probabilities). The same small CNN encoders as
`compare.py` ({args.stages} strided conv blocks, width {args.width}), Adam
{args.learning_rate:g}, batch {args.batch_size}, {args.epochs} epochs; every
model trains on the same pool; the checkpoint is the epoch with the best
validation accuracy of the fused head (a probe is read at its `Concat`
model's checkpoint), scored once on test. "val acc, epoch e" is the
validation accuracy after epoch e and "train acc" the running training
accuracy of that epoch. Checks, paired per seed: (a) the dominant modality
(higher accuracy alone) learns faster; (b) the weak modality's probe after
joint training is at least 5 points below that modality alone; (c) the
ensemble is not below concat. Mean ± std over seeds {seeds};
{keras.backend.backend()} backend, {wall / 60:.1f} minutes wall on 2 CPU
cores shared with other jobs.

    KERAS_BACKEND={keras.backend.backend()} python benchmarks/imbalance.py \\
        --seeds {seeds} --epochs {args.epochs} --write-readme

{tables}
"""


# --- command line --------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), choices=DATASETS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    add_data_arguments(parser)
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="Keras' compile(jit_compile=...)",
    )
    parser.add_argument(
        "--json", default=None, help="write every run's results here"
    )
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument(
        "--readme",
        default=os.path.join(HERE, "README.md"),
        help="the README whose section --write-readme replaces",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[
        args.jit_compile
    ]
    args.dataset_size = {
        "digits": args.digits_clips,
        "rooms": args.rooms_per_class,
    }
    return args


def main(argv=None):
    """Runs every dataset; returns `(results, tables)`."""
    args = parse_args(argv)

    def log(message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)  # see compare.py
    start = time.perf_counter()
    results = {name: run_dataset(name, args, log) for name in args.datasets}
    wall = time.perf_counter() - start
    tables = format_all(results)
    print(tables)
    print(f"\n{wall:.0f} s wall, backend {keras.backend.backend()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "results": results,
                    "checks": {n: checks(r) for n, r in results.items()},
                },
                f,
                indent=1,
            )
    if args.write_readme:
        write_readme(
            readme_section(tables, args, wall), args.readme, README_HEADING
        )
    return results, tables


if __name__ == "__main__":
    main()
