"""The Table 1 analogue: every fusion and balancer on the embedded datasets.

Zong et al. (IJCAI 2024), Table 1, compares unimodal models, late fusions
(concatenation, summation, FiLM, gated, attention) and balancers (G-Blend,
OGM-GE, PMR, ...) with the same encoders. This script does the same on the
two embedded stand-ins, with one API: every row is a
`keras_olm.BalancedMultimodalModel` that differs only in `fusion=` and
`balancer=`.

Data (decoded once by the package's readers and cached as `.npz` under
`$KERAS_OLM_CACHE`, default `~/.cache/keras_olm`):

- `digits`: the embedded audio-visual digits
  (`keras_olm.embedded.av_digits.generate`, read by `keras_olm.data.CremaD`
  in the CREMA-D layout): a 64 x 94 log-mel spectrogram and one 32x32
  frame per clip, 10 classes, split by speaker (1,459 training and 338
  test clips).
- `rooms`: the embedded RGB-D rooms (`keras_olm.embedded.rgbd_rooms`, read
  by `keras_olm.data.SunRGBD`) at 32x32, 19 scene classes (760 training
  and 760 test rooms).

Splits: the official test split is scored once per run. The official
training split is cut once (seed 0) into `val` (15%, picks the
checkpoint), `held_out` (10% of the rest, read only by the balancers that
measure held-out losses: OLM, G-Blend) and the training pool. Every row
fits on the same pool; no row trains on the validation, held-out or test
data.

Rows (`--rows` keys in brackets):

- `<modality> only` [unimodal]: one encoder and its classifier
  (a one-modality `BalancedMultimodalModel`, `balancer=None`);
- `Ensemble of unimodal models` [ensemble]: the average of the unimodal
  models' softmax probabilities (its s/epoch is the sum of theirs);
- `Concat`, `Sum`, `FiLM`, `Gated`, `Attention` [concat, sum, film, gated,
  attention]: plain joint training (`balancer=None`, the fused loss only)
  with each late fusion of `keras_olm.layers`;
- `Concat + <balancer>` [heads, olm, and every other name registered in
  `keras_olm.balancers.REGISTRY` when the script runs: ogm_ge, mmcosine,
  gblend, gradnorm, pmr, agm, mla, mmpareto]: concatenation with that
  balancer's defaults; `heads` is every head's cross-entropy without
  modulation. MLA's rows predict with its uncertainty fusion of the
  unimodal outputs (its fused head), as the paper tests.

Every row: the same small CNN encoders (`cnn_encoder`: `--width`,
`--stages`), Adam (`--learning-rate`), `--batch-size`, `--epochs` epochs,
the same seed for the same initial encoder weights; after each epoch the
fused accuracy on `val` is measured and the best epoch's weights are
scored once on test.
Columns: accuracy, mAP (macro over classes of one-vs-rest average
precision, `sklearn.metrics.average_precision_score`), macro F1 (of the
arg-max predictions), mean ± std over `--seeds`, and seconds per training
epoch (the mean over epochs 2.., which excludes tracing; includes the
validation pass).

    KERAS_BACKEND=tensorflow python benchmarks/compare.py --write-readme
    python benchmarks/compare.py --quick       # 1 seed, 4 rows, 3 epochs
    python benchmarks/compare.py --datasets digits --rows concat,olm \\
        --seeds 0 1 2 --epochs 8
    python benchmarks/compare.py --resume results.json   # add to a grid

Backends: on TensorFlow and JAX each run is dominated by tracing and
compiling its step; torch has none and, with one thread (set by `main`),
is the fastest choice on a CPU (measured times: "Backends for
`compare.py`" in `benchmarks/README.md`).

Prints the markdown table, writes the bar plot (`--plot`, default
`benchmarks/compare.png`) and, with `--write-readme`, replaces the
`## compare.py` section of `benchmarks/README.md`.
"""

import argparse
import json
import math
import os
import sys
import time

import keras
import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.metrics import f1_score

import keras_olm
from keras_olm import balancers as olm_balancers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embedded_data import DATASET_TITLES  # noqa: E402
from embedded_data import DATASETS  # noqa: E402
from embedded_data import add_data_arguments  # noqa: E402
from embedded_data import cnn_encoder  # noqa: E402
from embedded_data import load_dataset  # noqa: E402
from embedded_data import make_splits  # noqa: E402
from embedded_data import write_readme  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
README_HEADING = "## `compare.py`"

# --- models ------------------------------------------------------------

FUSIONS = {
    "concat": ("Concat", lambda: keras_olm.LateFusion("concat")),
    "sum": ("Sum", lambda: keras_olm.LateFusion("sum")),
    "film": ("FiLM", lambda: keras_olm.FiLMFusion()),
    "gated": ("Gated", lambda: keras_olm.GatedFusion()),
    "attention": ("Attention", lambda: keras_olm.AttentionFusion()),
}
# Registry aliases of rows listed once.
_ALIASES = {"multihead", "joint"}


def balancer_names():
    """`heads`, `olm`, then every other balancer registered now."""
    names = ["heads", "olm"]
    for name in olm_balancers.REGISTRY:
        if name not in names and name not in _ALIASES:
            names.append(name)
    return names


_TITLES = {
    "heads": "heads (no modulation)",
    "olm": "OLM",
    "ogm_ge": "OGM-GE",
    "gblend": "G-Blend",
    "agm": "AGM",
    "mla": "MLA",
    "mmpareto": "MMPareto",
}


def balancer_title(name):
    """The paper's name of a registered balancer (else its class name)."""
    if name in _TITLES:
        return _TITLES[name]
    return olm_balancers.REGISTRY[name].__name__


def all_rows():
    """Every row key, in table order."""
    return ["unimodal", "ensemble", *FUSIONS, *balancer_names()]


QUICK_ROWS = ["unimodal", "ensemble", "concat", "olm"]


def train_one(splits, modalities, num_classes, fusion, balancer, args, seed):
    """Trains one model with `keras_olm.compare_balancers`.

    One balancer, one seed: the library's comparison call sets the seed,
    builds the model, trains it on the pool, keeps the epoch with the best
    `val` accuracy and predicts the test split once.

    Returns:
        A dict: the test probabilities, seconds per epoch, best epoch.
    """
    label = balancer or "joint"

    def build(resolved):
        encoders = {
            m: cnn_encoder(args.width, args.stages, name=f"{m}_encoder")
            for m in modalities
        }
        return keras_olm.BalancedMultimodalModel(
            encoders, num_classes, fusion=fusion, balancer=resolved
        )

    def pick(split):
        x, y = splits[split]
        return {m: x[m] for m in modalities}, y

    x, y = pick("pool")
    result = keras_olm.compare_balancers(
        build,
        x,
        y,
        balancers={label: balancer},
        validation_data=pick("val"),
        held_out_data=pick("held_out"),
        test_data=pick("test"),
        seeds=[seed],
        epochs=args.epochs,
        batch_size=args.batch_size,
        compile_kwargs={
            "optimizer": keras.optimizers.Adam(args.learning_rate),
            "jit_compile": args.jit_compile,
        },
        verbose=0,
    )
    run = result.runs.iloc[0]
    return {
        "probs": result.probabilities[(label, seed)],
        "sec_per_epoch": float(run["seconds_per_epoch"]),
        "best_epoch": int(run["best_epoch"]),
    }


def scores(y, probs, num_classes):
    """Accuracy, mAP and macro F1 of probabilities `(n, num_classes)`."""
    pred = probs.argmax(-1)
    onehot = np.eye(num_classes)[y]
    present = onehot.sum(0) > 0  # AP is undefined for absent classes
    return {
        "acc": float(np.mean(pred == y)),
        "map": float(
            average_precision_score(
                onehot[:, present], probs[:, present], average="macro"
            )
        ),
        "f1": float(
            f1_score(
                y,
                pred,
                labels=np.arange(num_classes)[present],
                average="macro",
                zero_division=0,
            )
        ),
    }


ENSEMBLE = "Ensemble of unimodal models"


def row_titles(rows, modalities):
    """The result titles of the requested row keys, in table order."""
    titles = []
    for key in all_rows():
        if key not in rows:
            continue
        if key == "unimodal":
            titles += [f"only:{i}" for i in range(len(modalities))]
        elif key == "ensemble":
            titles.append(ENSEMBLE)
        elif key in FUSIONS:
            titles.append(FUSIONS[key][0])
        else:
            titles.append(f"Concat + {balancer_title(key)}")
    return titles


def run_dataset(name, rows, args, log, store, save=None, seeds=None):
    """Every requested row for every seed on one dataset.

    Runs already in `store` (from `--resume`) are not run again.

    Args:
        name: str. The dataset.
        rows: list of row keys.
        args: the parsed command line.
        log: callable printing progress.
        store: dict, updated in place: `store[name]["runs"][title][seed]`
            is a result dict (`acc`, `map`, `f1`, `sec_per_epoch`,
            `best_epoch`; unimodal rows also keep their test `probs` for
            the ensemble) or a string (the error that stopped that row).
        save: callable called after every run, or `None`.
        seeds: list of int or `None`. Seeds to run now (default
            `args.seeds`); the returned view covers `args.seeds`.

    Returns:
        A dict from row title to the list of per-seed results, or to a
        string for a row that failed; `"modalities"` lists the dataset's
        modalities. The unimodal rows are titled `only:<i>` for the i-th
        modality (see `row_title`).
    """
    data = load_dataset(name, args.dataset_size.get(name))
    splits = make_splits(data, max_train=args.max_train, max_eval=args.max_eval)
    modalities, num_classes = data["modalities"], data["num_classes"]
    test_y = splits["test"][1]
    log(
        f"{name}: pool {len(splits['pool'][1])}, held-out "
        f"{len(splits['held_out'][1])}, val {len(splits['val'][1])},"
        f" test {len(test_y)}, modalities {modalities}, {num_classes} classes"
    )
    entry = store.setdefault(name, {"runs": {}})
    entry["modalities"] = modalities
    runs = entry["runs"]

    def attempt(title, seed, fn, *fn_args):
        done = runs.setdefault(title, {})
        if str(seed) in done:
            return done[str(seed)]
        if any(isinstance(v, str) for v in done.values()):
            return None  # failed on an earlier seed
        shown = title
        if title.startswith("only:"):
            shown = f"{modalities[int(title[5:])]} only"
        start = time.perf_counter()
        try:
            run = fn(*fn_args)
        except Exception as e:  # a failing balancer must not stop the grid
            done[str(seed)] = f"failed: {type(e).__name__}: {e}"
            log(f"  {shown}, seed {seed}: {done[str(seed)]}")
            save()
            return None
        result = {
            **scores(test_y, np.asarray(run["probs"]), num_classes),
            "sec_per_epoch": run["sec_per_epoch"],
            "best_epoch": run["best_epoch"],
        }
        if title.startswith("only:"):
            result["probs"] = np.round(run["probs"], 6).tolist()
        done[str(seed)] = result
        save()
        log(
            f"  {shown}, seed {seed}: acc {result['acc']:.3f} mAP "
            f"{result['map']:.3f} F1 {result['f1']:.3f} best epoch "
            f"{result['best_epoch']} ({time.perf_counter() - start:.0f} s)"
        )
        return result

    def joint(fusion, balancer, seed):
        return train_one(
            splits, modalities, num_classes, fusion, balancer, args, seed
        )

    def alone(modality, seed):
        one = {k: (_only(x, modality), y) for k, (x, y) in splits.items()}
        return train_one(one, [modality], num_classes, None, None, args, seed)

    save = save or (lambda: None)
    for seed in args.seeds if seeds is None else seeds:
        if "unimodal" in rows or "ensemble" in rows:
            unimodal = [
                attempt(f"only:{i}", seed, alone, m, seed)
                for i, m in enumerate(modalities)
            ]
            if "ensemble" in rows and all(unimodal):
                attempt(ENSEMBLE, seed, _ensemble, unimodal)
        for key, (title, make_fusion) in FUSIONS.items():
            if key in rows:
                attempt(title, seed, joint, make_fusion(), None, seed)
        for key in balancer_names():
            if key in rows:
                title = f"Concat + {balancer_title(key)}"
                concat = keras_olm.LateFusion("concat")
                attempt(title, seed, joint, concat, key, seed)

    view = {"modalities": modalities}
    for title in row_titles(rows, modalities):
        done = runs.get(title, {})
        failed = [v for v in done.values() if isinstance(v, str)]
        if failed:
            view[title] = failed[0]
        else:
            view[title] = [
                {**done[str(s)], "seed": s}
                for s in args.seeds
                if str(s) in done
            ]
    return view


def _only(x, modality):
    return {modality: x[modality]}


def _ensemble(unimodal):
    """The unimodal models' averaged probabilities, as one run."""
    return {
        "probs": np.mean([np.asarray(r["probs"]) for r in unimodal], axis=0),
        "sec_per_epoch": sum(r["sec_per_epoch"] for r in unimodal),
        "best_epoch": "/".join(str(r["best_epoch"]) for r in unimodal),
    }


# --- reporting ---------------------------------------------------------


def _mean_std(values, digits=3):
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def _runs(results):
    """The rows of `run_dataset` results, without the metadata."""
    return {t: r for t, r in results.items() if t != "modalities"}


def row_title(title, all_results):
    """`only:<i>` becomes "<i-th modality of each dataset> only"."""
    if not title.startswith("only:"):
        return title
    i = int(title.split(":")[1])
    names = [r["modalities"][i] for r in all_results.values()]
    return f"{' / '.join(names)} only"


def format_table(all_results):
    """The markdown table: rows are methods, columns per dataset."""
    datasets = list(all_results)
    titles = []
    for results in all_results.values():
        titles += [t for t in _runs(results) if t not in titles]
    header = "| method |"
    rule = "|---|"
    for name in datasets:
        d = DATASET_TITLES.get(name, name)
        header += f" {d} acc | {d} mAP | {d} macro F1 | {d} s/epoch |"
        rule += "---|---|---|---|"
    lines = [header, rule]
    for title in titles:
        line = f"| {row_title(title, all_results)} |"
        for name in datasets:
            runs = all_results[name].get(title)
            if runs is None:
                line += " – | – | – | – |"
            elif isinstance(runs, str):
                line += f" {runs} | | | |"
            else:
                line += "".join(
                    f" {_mean_std([r[k] for r in runs])} |"
                    for k in ("acc", "map", "f1")
                )
                sec = _mean_std([r["sec_per_epoch"] for r in runs], 2)
                line += f" {sec} |"
        lines.append(line)
    return "\n".join(lines)


#: The references of the paired differences: plain joint training and the
#: same per-head losses without modulation.
PAIRED_REFERENCES = ("Concat", "Concat + heads (no modulation)")


def format_paired(all_results, references=PAIRED_REFERENCES):
    """Paired differences in test accuracy of every balancer row.

    Each cell is the mean ± std over the seeds both rows ran of (row -
    reference), seed by seed (same samples, same initial weights).
    """
    datasets = list(all_results)
    header = "| method |"
    rule = "|---|"
    for name in datasets:
        d = DATASET_TITLES.get(name, name)
        for ref in references:
            header += f" {d}: − {ref} |"
            rule += "---|"
    lines = [header, rule]
    titles = []
    for results in all_results.values():
        titles += [t for t in _runs(results) if t.startswith("Concat + ")]
    for title in dict.fromkeys(titles):
        line = f"| {title} |"
        for name in datasets:
            runs = all_results[name]
            for ref in references:
                mine, theirs = runs.get(title), runs.get(ref)
                if title == ref or not isinstance(mine, list):
                    line += " – |"
                    continue
                if not isinstance(theirs, list):
                    line += " – |"
                    continue
                acc = {r["seed"]: r["acc"] for r in theirs}
                diff = [
                    r["acc"] - acc[r["seed"]] for r in mine if r["seed"] in acc
                ]
                line += (
                    f" {_signed(diff)} (n={len(diff)}) |" if diff else " – |"
                )
        lines.append(line)
    return "\n".join(lines)


def _signed(values, digits=3):
    values = np.asarray(values, float)
    return f"{values.mean():+.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def plot(all_results, path):
    """Bar plot of test accuracy (mean ± std over seeds) per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(all_results)
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6 * len(datasets), 6), squeeze=False
    )
    for ax, name in zip(axes[0], datasets):
        modalities = all_results[name]["modalities"]
        rows = [
            (
                f"{modalities[int(t[5:])]} only" if t[:5] == "only:" else t,
                np.array([r["acc"] for r in runs]),
            )
            for t, runs in _runs(all_results[name]).items()
            if not isinstance(runs, str)
        ]
        titles = [t for t, _ in rows]
        means = [v.mean() for _, v in rows]
        stds = [v.std() for _, v in rows]
        colors = [
            "tab:gray"
            if " only" in t or "Ensemble" in t
            else ("tab:orange" if "+" in t else "tab:blue")
            for t in titles
        ]
        pos = np.arange(len(rows))[::-1]
        ax.barh(pos, means, xerr=stds, color=colors, capsize=3)
        ax.set_yticks(pos, titles)
        low = min(means) if means else 0.0
        ax.set_xlim(max(0.0, math.floor((low - 0.1) * 10) / 10), 1.0)
        ax.set_xlabel("test accuracy (mean ± std over seeds)")
        ax.set_title(DATASET_TITLES.get(name, name))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Unimodal (gray), late fusions with joint training (blue), "
        "balancers with concat fusion (orange)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_section(table, args, wall):
    seeds = " ".join(str(s) for s in args.seeds)
    return f"""{README_HEADING}: the Table 1 analogue

Every late fusion and every balancer registered in
`keras_olm.balancers.REGISTRY`, with the same small CNN encoders
({args.stages} strided conv blocks, width {args.width}), Adam
{args.learning_rate:g}, batch {args.batch_size}, {args.epochs} epochs,
on the embedded AV digits (audio spectrogram + one frame, 10 classes,
split by speaker) and RGB-D rooms (32x32, 19 classes). The checkpoint
(epoch) is chosen by fused accuracy on a validation split of the training
data and scored once on test; every row trains on the same pool, and the
`held_out` split that OLM and G-Blend read is training data for no row.
The Ensemble row averages the unimodal models'
probabilities (its s/epoch is the sum of theirs). mAP is the macro mean of
one-vs-rest average precision; s/epoch excludes the first (tracing) epoch.
Mean ± std over seeds {seeds}; {keras.backend.backend()} backend,
{wall / 60:.1f} minutes wall on 2 CPU cores shared with other jobs (times
are rough). Bar plot: `compare.png`.

    KERAS_BACKEND={keras.backend.backend()} python benchmarks/compare.py \\
        --seeds {seeds} --epochs {args.epochs} --write-readme

{table}
"""


# --- command line --------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), choices=DATASETS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated row keys (default all): {all_rows()}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 seed, 3 epochs, rows {QUICK_ROWS}, 600 training samples",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--plot", default=os.path.join(HERE, "compare.png"), help="PNG path"
    )
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="Keras' compile(jit_compile=...)",
    )
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument(
        "--readme",
        default=os.path.join(HERE, "README.md"),
        help="the README whose section --write-readme replaces",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="JSON file of results: runs found there are not run again, "
        "every new run is added (same settings and backend required)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds or [0]
        args.epochs = args.epochs or 3
        args.rows = args.rows or ",".join(QUICK_ROWS)
        args.max_train = args.max_train or 600
    args.seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    args.epochs = args.epochs or 10
    args.rows = args.rows.split(",") if args.rows else all_rows()
    unknown = sorted(set(args.rows) - set(all_rows()))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {all_rows()}")
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[
        args.jit_compile
    ]
    args.dataset_size = {
        "digits": args.digits_clips,
        "rooms": args.rooms_per_class,
    }
    return args


def _settings(args):
    """What must agree between runs merged by `--resume`."""
    return {
        "backend": keras.backend.backend(),
        "epochs": args.epochs,
        "width": args.width,
        "stages": args.stages,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "dataset_size": args.dataset_size,
        "jit_compile": str(args.jit_compile),
    }


def _load_store(path, settings):
    if path is None or not os.path.exists(path):
        return {"settings": settings, "wall_seconds": 0.0, "datasets": {}}
    with open(path, encoding="utf-8") as f:
        store = json.load(f)
    if store["settings"] != settings:
        raise ValueError(
            f"--resume {path}: its runs used {store['settings']}, this run "
            f"{settings}; use another file."
        )
    return store


def main(argv=None):
    """Runs the grid; returns `(results, table)`."""
    args = parse_args(argv)

    def log(message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if keras.backend.backend() == "torch":
        import torch

        # tf.data's threads and torch's OpenMP pool oversubscribe small
        # CPUs (see the README's torch tip).
        torch.set_num_threads(1)
    start = time.perf_counter()
    store = _load_store(args.resume, _settings(args))
    previous = store["wall_seconds"]

    def save():
        if args.resume is None:
            return
        store["wall_seconds"] = previous + time.perf_counter() - start
        tmp = args.resume + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(store, f)
        os.replace(tmp, args.resume)

    log(
        f"backend {keras.backend.backend()}, seeds {args.seeds}, epochs "
        f"{args.epochs}, rows {args.rows}"
    )
    # Seed by seed over the datasets: an interrupted grid (see --resume)
    # has every row of the first seeds.
    for seed in args.seeds:
        for name in args.datasets:
            run_dataset(
                name, args.rows, args, log, store["datasets"], save, [seed]
            )
    results = {
        name: run_dataset(
            name, args.rows, args, lambda _: None, store["datasets"], seeds=[]
        )
        for name in args.datasets
    }
    wall = previous + time.perf_counter() - start
    table = format_table(results)
    table += (
        "\n\nPaired differences in test accuracy against plain joint "
        "training (`Concat`) and the per-head losses without modulation, "
        "seed by seed (mean ± std; n = seeds):\n\n" + format_paired(results)
    )
    print(table)
    print(f"\n{wall:.0f} s wall, backend {keras.backend.backend()}")
    if args.plot:
        plot(results, args.plot)
    if args.write_readme:
        write_readme(
            readme_section(table, args, wall), args.readme, README_HEADING
        )
    return results, table


if __name__ == "__main__":
    main()
