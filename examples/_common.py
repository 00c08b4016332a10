"""What the examples share: splits, training both runs, tables, figures.

`sunrgbd_depth.py` and `cremad.py` train the same late-fusion model three
times, with the same seed, data and splits: plain joint training
(`balancer=None`), the same heads without modulation (`balancer="heads"`,
the reference that tells what OLM's modulation adds) and OLM; with
`--seeds`, for several weight seeds, with the paired differences. This
module holds the parts they share:

- `make_parser`, `add_training_args`: the common command-line options;
- `validation_indices`, `batch_datasets`: the `val` split (picks the
  checkpoint) and the batched `train` / `held_out` / `val` / `test` datasets;
- `BestWeights`, `train_and_test`: one run, its checkpoint and its test
  scores (accuracy, mean class accuracy, confusion matrices);
- `format_table`, `plot_confusion_grid`, `run_comparison`, `main`: both
  runs,
  their tables, the confusion-matrix comparison (Fig. 4 of Zong et al.,
  IJCAI 2024), the logit-norm comparison (Fig. 5) and `results.json`.

Not part of the `keras_olm` package: the examples import it from their
own folder.
"""

import argparse
import importlib.util
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix

import keras_olm
from keras_olm import callbacks as olm_callbacks

RUN_TITLES = {
    "baseline": "joint training (no OLM)",
    "heads": "heads, no modulation",
    "olm": "OLM",
}


# --- backend settings on a CPU -----------------------------------------

# XLA's algebraic simplifier swaps a convolution's operands when the
# feature map is smaller than the kernel (ResNet18's last stage at 64x64
# input: 3x3 kernels on 2x2 maps); XLA:CPU runs the swapped convolution
# about 90 times slower (0.54 s instead of 6 ms here), most of a JAX
# training step of the main job (benchmarks/README.md, "backends.py").
JAX_CPU_XLA_FLAGS = "--xla_disable_hlo_passes=algsimp"
# Packages that give JAX a GPU or TPU; with one installed the examples
# leave XLA's passes alone.
JAX_ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)


def cpu_settings(backend, environ, accelerator):
    """The environment variables the examples add for `backend` on a CPU.

    Nothing that `environ` already has is changed: a user who sets
    `XLA_FLAGS` (even to an empty string) keeps exactly that.

    Args:
        backend: str. The Keras backend's name.
        environ: mapping. The process environment.
        accelerator: bool. Whether the backend may run on a GPU or TPU.

    Returns:
        A dict of the variables to add (empty when none).
    """
    if backend == "jax" and not accelerator and "XLA_FLAGS" not in environ:
        platforms = environ.get("JAX_PLATFORMS", "")
        if platforms in ("", "cpu"):
            return {"XLA_FLAGS": JAX_CPU_XLA_FLAGS}
    return {}


def apply_cpu_settings():
    """Adds `cpu_settings` to `os.environ` and says what it added.

    Called by the examples' `__main__` blocks, before the backend runs
    its first operation (JAX reads `XLA_FLAGS` when it starts its CPU
    client, not when it is imported).
    """
    accelerator = any(
        importlib.util.find_spec(name) is not None
        for name in JAX_ACCELERATOR_PLUGINS
    )
    added = cpu_settings(keras.backend.backend(), os.environ, accelerator)
    for name, value in added.items():
        os.environ[name] = value
        print(f"CPU setting: {name}={value} (set {name} to choose your own)")
    return added


# --- command line ------------------------------------------------------


def make_parser(doc):
    """An `argparse` parser described by the first paragraph of `doc`."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_training_args(
    parser, out_dir, epochs, batch_size=32, learning_rate=1e-3
):
    """Adds the options every example has to an `argparse` parser.

    `--epochs`, `--batch-size`, `--learning-rate`, `--held-out-fraction`,
    `--val-fraction`, `--cache` / `--no-cache`, `--no-olm`, `--out-dir`,
    `--seed`, `--seeds` and `--verbose`.

    Args:
        parser: `argparse.ArgumentParser`.
        out_dir: str. Default of `--out-dir`.
        epochs: int. Default of `--epochs`.
        batch_size: int. Default of `--batch-size`. Defaults to `32`.
        learning_rate: float. Default of `--learning-rate` (Adam).
            Defaults to `1e-3`.
    """
    parser.add_argument("--epochs", type=int, default=epochs, help="per run")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help="per step"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=learning_rate, help="Adam"
    )
    parser.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.1,
        help="share of the training split held out for OLM",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the rest held out to pick the checkpoint",
    )
    parser.add_argument(
        "--cache",
        default="auto",
        help="the readers' cache of decoded inputs: 'memory', a directory, "
        "'none', or 'auto' ('memory' for the embedded data, "
        "<out-dir>/input_cache for --data-dir)",
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_const",
        const="none",
        help="decode every input every epoch (same as --cache none)",
    )
    parser.add_argument(
        "--no-olm",
        action="store_true",
        help="joint training only (no heads, no OLM run)",
    )
    parser.add_argument("--out-dir", default=out_dir, help="figures, CSV")
    parser.add_argument(
        "--seed", type=int, default=0, help="weights, splits, shuffling"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="weight seeds to repeat every run with (the splits keep "
        "--seed); prints paired differences. Default: --seed alone",
    )
    parser.add_argument(
        "--verbose", type=int, default=2, help="Keras fit verbosity"
    )


# --- data --------------------------------------------------------------


def reader_cache(args, embedded):
    """The `cache` argument of the readers from `--cache`.

    Args:
        args: the parsed command line.
        embedded: bool. Whether the data is the small embedded set.

    Returns:
        None, `"memory"` or a directory.
    """
    cache = args.cache
    if cache == "auto":
        if embedded:
            return "memory"
        return os.path.join(args.out_dir, "input_cache")
    if cache in ("none", "off", ""):
        return None
    return cache


def validation_indices(n, fraction, seed):
    """Seeded `(train, val)` index arrays over `range(n)`.

    At least one sample goes to each side when `fraction > 0` and
    `n >= 2`.

    Args:
        n: int. Number of samples.
        fraction: float. Share of them in `val`.
        seed: int. Seed of the permutation.

    Returns:
        A tuple of two sorted int arrays, disjoint, covering `range(n)`.
    """
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def batch_datasets(reader, splits, batch_size, cache, seed, **info):
    """Batches the unbatched splits; returns the examples' data dict.

    Args:
        reader: the `keras_olm.data` reader of the official splits (its
            `held_out` and `test` sizes are reported).
        splits: dict with unbatched `tf.data.Dataset`s `"train"`,
            `"held_out"`, `"val"` and `"test"`, elements
            `({modality: tensor}, label)`, `"train"` with a known
            cardinality.
        batch_size: int. Batch size of every split.
        cache: bool. Keep the `train`, `held_out` and `val` samples in
            memory after the first pass, as they come (for splits with
            nothing random, e.g. feature arrays); `train` is then shuffled
            in memory every epoch. Readers of files cache their decoding
            themselves instead (their `cache` argument, `reader_cache`),
            which keeps the random frame and crop choices per epoch.
        seed: int. Seed of the in-memory shuffle.
        **info: more entries of the returned dict (e.g. `kind`, `source`).

    Returns:
        A dict with the batched, prefetched datasets (`"train"`, `"held_out"`,
        `"val"`, `"test"`), `"reader"`, `"class_names"`, `"input_shapes"`
        (modality -> shape without the batch axis), `"sizes"` (split ->
        number of samples) and `info`.
    """
    train, val, held_out = splits["train"], splits["val"], splits["held_out"]
    n_train = int(train.cardinality())
    if cache:
        train, val, held_out = train.cache(), val.cache(), held_out.cache()
        train = train.shuffle(n_train, seed=seed, reshuffle_each_iteration=True)
    datasets = {
        "train": train,
        "held_out": held_out,
        "val": val,
        "test": splits["test"],
    }
    datasets = {
        k: v.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        for k, v in datasets.items()
    }
    spec = datasets["train"].element_spec[0]
    return {
        **datasets,
        "reader": reader,
        "class_names": list(reader.class_names),
        "input_shapes": {m: tuple(spec[m].shape[1:]) for m in spec},
        "sizes": {
            "train": n_train,
            "held_out": len(reader.samples("held_out")),
            "val": int(val.cardinality()),
            "test": len(reader.samples("test")),
        },
        **info,
    }


# --- training ----------------------------------------------------------


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best fused validation accuracy.

    Reads the accuracy that a `LogitNormHistory` on the validation split
    measured at the end of the epoch (list it before this callback), so the
    validation data is run once per epoch. Call `restore()` after `fit` to
    load the best weights (after `fit` rather than in `on_train_end`, so
    that every backend's trainer has synced its state).

    Args:
        diagnostics: the `LogitNormHistory` measuring the validation split.
        head: str. The head whose accuracy is maximised. Defaults to
            `"fused"`.
    """

    def __init__(self, diagnostics, head="fused"):
        super().__init__()
        self.diagnostics = diagnostics
        self.head = head
        self.best = -np.inf
        self.best_epoch = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        rows = [
            r
            for r in self.diagnostics.history
            if r["epoch"] == epoch + 1 and r["head"] == self.head
        ]
        if not rows:
            return
        value = float(rows[0]["acc"])
        if value >= self.best:  # ties: the later epoch
            self.best = value
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()

    def restore(self):
        """Loads the best weights into the model (if any epoch was measured)."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def compile_model(
    encoders, num_classes, balancer, learning_rate, weight_decay=None
):
    """The late-fusion `BalancedMultimodalModel`, compiled with Adam.

    With `weight_decay`, AdamW with that decoupled weight decay.
    """
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=num_classes, balancer=balancer
    )
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer)
    return model


def train_and_test(data, args, name, balancer, build_model):
    """Trains one run, picks its checkpoint on `val`, scores `test` once.

    Args:
        data: the dict of `batch_datasets`.
        args: the parsed command line (`seed`, `out_dir`, `epochs`,
            `verbose`).
        name: str. The run's name (its folder under `args.out_dir`).
        balancer: the model's balancer (`None` or `"olm"`).
        build_model: callable `(data, args, balancer) -> compiled model`.

    Returns:
        A dict with `"acc"` and `"mean_class_acc"` (head -> float),
        `"confusion"` (head -> (C, C) counts, rows = true class),
        `"best_epoch"`, `"best_val_fused_acc"`, `"seconds"`,
        `"diagnostics_csv"` (the `LogitNormHistory` CSV path) and
        `"figures"` (the PNG paths it drew).
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = build_model(data, args, balancer)
    run_dir = os.path.join(args.out_dir, name)
    diagnostics = olm_callbacks.LogitNormHistory(
        data["val"], out_dir=run_dir, class_names=data["class_names"]
    )
    best = BestWeights(diagnostics)
    model.fit(
        data["train"],
        held_out_data=data["held_out"],
        epochs=args.epochs,
        callbacks=[diagnostics, best],
        verbose=args.verbose,
    )
    best.restore()
    logits = model.predict_heads(data["test"], verbose=0)
    labels = np.concatenate([y for _, y in data["test"].as_numpy_iterator()])
    classes = np.arange(len(data["class_names"]))
    result = {
        "acc": {},
        "mean_class_acc": {},
        "confusion": {},
        "best_epoch": best.best_epoch,
        "best_val_fused_acc": best.best,
        "diagnostics_csv": diagnostics.csv_path,
        "figures": list(diagnostics.figures),
    }
    for head, values in logits.items():
        pred = values.argmax(-1)
        cm = confusion_matrix(labels, pred, labels=classes)
        present = cm.sum(1) > 0
        recall = np.diag(cm)[present] / cm.sum(1)[present]
        result["acc"][head] = float(np.mean(pred == labels))
        result["mean_class_acc"][head] = float(recall.mean())
        result["confusion"][head] = cm
    result["seconds"] = time.perf_counter() - start
    return result


# --- reporting ---------------------------------------------------------


def format_table(results, heads, head_titles, metric="acc"):
    """The per-head test metric of every run as a Markdown table."""
    lines = [
        "| run | " + " | ".join(head_titles.get(h, h) for h in heads) + " |",
        "|---" * (len(heads) + 1) + "|",
    ]
    for name, result in results.items():
        cells = " | ".join(f"{result[metric][h]:.3f}" for h in heads)
        lines.append(f"| {RUN_TITLES.get(name, name)} | {cells} |")
    return "\n".join(lines)


def plot_confusion_grid(results, heads, class_names, path, head_titles):
    """Fig. 4 analogue: row-normalised confusion matrices, runs x heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(results), len(heads)
    # The panel grows with the class count so that the tick labels keep
    # 8 pt (7 pt beyond 30 classes) and do not overlap.
    n = len(class_names)
    side = max(3.2, 1.6 + 0.24 * n)
    tick_size = 8 if n <= 30 else 7
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(side * cols + 1, side * rows),
        squeeze=False,
        layout="constrained",
    )
    ticks = np.arange(len(class_names))
    image = None
    for r, (name, result) in enumerate(results.items()):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            cm = result["confusion"][head].astype(float)
            cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            image = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
            ax.set_title(
                f"{RUN_TITLES.get(name, name)}: {head_titles.get(head, head)}"
                f"\naccuracy {result['acc'][head]:.3f}",
                fontsize=9,
            )
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels(class_names, rotation=90, fontsize=tick_size)
            ax.set_yticklabels(class_names, fontsize=tick_size)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the true class")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def written_figures(figures, per_seed):
    """Every PNG the comparison wrote: its own figures, then each run's.

    Args:
        figures: dict from name to the path of a figure drawn here.
        per_seed: dict from run name to its `train_and_test` results.

    Returns:
        The list of PNG paths that exist on disk, each once.
    """
    paths = list(figures.values())
    for results in per_seed.values():
        for result in results:
            paths.extend(result.get("figures", []))
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def paired_differences(per_seed, metric="acc", head="fused"):
    """OLM minus each reference run, seed by seed.

    Args:
        per_seed: dict from run name to its list of `train_and_test`
            results, one per seed, in the same seed order.
        metric: str. Defaults to `"acc"`.
        head: str. Defaults to `"fused"`.

    Returns:
        A dict from reference run name (`"heads"`, `"baseline"`) to the
        per-seed differences `OLM - reference`, or `{}` without OLM.
    """
    if "olm" not in per_seed:
        return {}
    olm = np.array([r[metric][head] for r in per_seed["olm"]])
    return {
        name: (
            olm - np.array([r[metric][head] for r in per_seed[name]])
        ).tolist()
        for name in ("heads", "baseline")
        if name in per_seed
    }


def format_seed_table(per_seed, heads, head_titles, metric="acc"):
    """The per-head test metric, mean ± std over the seeds."""
    n = len(next(iter(per_seed.values())))
    lines = [
        f"| run ({n} seeds) | "
        + " | ".join(head_titles.get(h, h) for h in heads)
        + " |",
        "|---" * (len(heads) + 1) + "|",
    ]
    for name, results in per_seed.items():
        cells = []
        for h in heads:
            values = np.array([r[metric][h] for r in results])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        lines.append(f"| {RUN_TITLES.get(name, name)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def run_comparison(args, data, build_model, head_titles, start=None):
    """Trains joint training and (unless `--no-olm`) the heads without
    modulation and OLM, for every seed of `--seeds`; reports them.

    Prints the per-head test accuracy and mean class accuracy of each run
    as Markdown tables (mean ± std with several seeds) and the per-seed
    paired differences of fused test accuracy, OLM minus heads and OLM
    minus joint training, and writes into `args.out_dir`:
    `confusion_matrices.png` (rows: runs; columns: heads; first seed),
    `logit_norms_comparison.png` (the runs' per-class logit norms, when
    OLM ran too), `results.json`, and per run the `LogitNormHistory` CSV
    and figures (`baseline/`, `heads/`, `olm/`; with several seeds
    `<run>/seed<k>/`).

    Args:
        args: the parsed command line (see `add_training_args`).
        data: the dict of `batch_datasets`.
        build_model: callable `(data, args, balancer) -> compiled model`.
        head_titles: dict. Column titles of the heads (e.g.
            `{"audio": "Audio", "fused": "AV (fused)"}`).
        start: float or None. `time.perf_counter()` when the example
            started (the printed total time counts from it). Defaults to
            `None`: now.

    Returns:
        A dict with `"runs"` (run -> result of `train_and_test` for the
        first seed), `"seeds"` (run -> one result per seed), `"paired"`
        (see `paired_differences`), `"table"` (the accuracy table),
        `"sizes"`, `"figures"` (name -> PNG path of the comparison's own
        figures) and `"written_figures"` (every PNG written, the runs'
        included, as the printed "Figures" line lists them).
    """
    start = time.perf_counter() if start is None else start
    print(
        f"backend: {keras.backend.backend()} | data: {data['source']} | "
        f"splits: {data['sizes']} | inputs: {data['input_shapes']}"
    )
    runs = [("baseline", None)]
    if not args.no_olm:
        runs += [("heads", "heads"), ("olm", "olm")]
    seeds = list(args.seeds or [args.seed])
    split_seed = args.seed
    per_seed = {name: [] for name, _ in runs}
    for seed in seeds:
        args.seed = seed
        for name, balancer in runs:
            folder = name if len(seeds) == 1 else f"{name}/seed{seed}"
            print(f"--- {RUN_TITLES[name]}, seed {seed} ---")
            result = train_and_test(data, args, folder, balancer, build_model)
            per_seed[name].append(result)
            print(
                f"checkpoint: epoch {result['best_epoch']} (validation "
                f"fused accuracy {result['best_val_fused_acc']:.3f}); "
                f"{result['seconds']:.0f} s"
            )
    args.seed = split_seed
    results = {name: rs[0] for name, rs in per_seed.items()}
    heads = [*data["input_shapes"], "fused"]
    if len(seeds) == 1:
        table = format_table(results, heads, head_titles, "acc")
        mean_table = format_table(results, heads, head_titles, "mean_class_acc")
    else:
        table = format_seed_table(per_seed, heads, head_titles, "acc")
        mean_table = format_seed_table(
            per_seed, heads, head_titles, "mean_class_acc"
        )
    print("\nTest accuracy:")
    print(table)
    print("\nTest mean class accuracy:")
    print(mean_table)
    paired = paired_differences(per_seed)
    if paired:
        print(
            f"\nFused test accuracy, OLM minus the reference (seeds {seeds}):"
        )
        for name, diffs in paired.items():
            values = ", ".join(f"{d:+.3f}" for d in diffs)
            print(
                f"- {RUN_TITLES[name]}: {np.mean(diffs):+.3f} ± "
                f"{np.std(diffs):.3f} (per seed: {values})"
            )
    figures = {
        "confusion": plot_confusion_grid(
            results,
            heads,
            data["class_names"],
            os.path.join(args.out_dir, "confusion_matrices.png"),
            head_titles,
        )
    }
    if len(results) > 1:
        figures["logit_norms"] = os.path.join(
            args.out_dir, "logit_norms_comparison.png"
        )
        olm_callbacks.plot_logit_norms(
            [r["diagnostics_csv"] for r in results.values()],
            labels=[RUN_TITLES[n] for n in results],
            path=figures["logit_norms"],
        )
    seconds = time.perf_counter() - start
    summary = {
        "backend": keras.backend.backend(),
        "data": data["source"],
        "sizes": data["sizes"],
        "args": vars(args),
        "seconds": seconds,
        "seeds": seeds,
        "paired_fused_acc": paired,
        "per_seed_fused_acc": {
            name: [r["acc"]["fused"] for r in rs]
            for name, rs in per_seed.items()
        },
        "runs": {
            name: {
                k: v
                for k, v in r.items()
                if k not in ("confusion", "diagnostics_csv")
            }
            | {"confusion": {h: m.tolist() for h, m in r["confusion"].items()}}
            for name, r in results.items()
        },
    }
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    written = written_figures(figures, per_seed)
    print(f"\nFigures ({len(written)}): {', '.join(map(str, written))}")
    print(f"Total time: {seconds:.0f} s")
    return {
        "runs": results,
        "seeds": per_seed,
        "paired": paired,
        "table": table,
        "sizes": data["sizes"],
        "figures": figures,
        "written_figures": written,
    }


def main(argv, parse_args, load_data, build_model, head_titles):
    """An example's `main`: parse, load the data, `run_comparison`.

    Args:
        argv: list of str or None. The command line (None: `sys.argv`).
        parse_args: callable `argv -> args` (with `out_dir`).
        load_data: callable `args -> data` (see `batch_datasets`).
        build_model: callable `(data, args, balancer) -> compiled model`.
        head_titles: dict. Column titles of the heads.

    Returns:
        What `run_comparison` returns.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    data = load_data(args)
    return run_comparison(args, data, build_model, head_titles, start=start)
