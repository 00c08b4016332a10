"""RGB + depth scene classification (SUN RGB-D, 19 classes) with OLM.

The main job of keras-olm: two ResNet18 encoders (one for RGB, one for
depth) built from keras-hub's `ResNetBackbone` configuration with random
weights (nothing is downloaded), late fusion, and OLM against plain joint
training. Both runs use the same seed, the same data and the same splits;
the example prints every head's test accuracy (RGB, Depth, RGB-D fused) for
both and draws the analogue of Fig. 4 of Zong et al. (IJCAI 2024): the
confusion matrices of RGB, D and RGB-D without and with OLM.

Data (every split comes from the repository's readers):

- default: the embedded RGB-D rooms (`keras_olm.datasets.rgbd_rooms`, 19
  classes x 80 samples at 64x64, generated once into the cache and read by
  `keras_olm.data.SunRGBD` exactly as a real SUN RGB-D copy);
- `--data-dir DIR`: a real SUN RGB-D copy (sensor folders plus
  `allsplit.mat`, or `train.txt`/`test.txt`; see `keras_olm.data.SunRGBD`)
  at 224x224 by default (`--image-size`); meant for a GPU;
- `--features DIR`: pre-extracted features (the paper used Places-CNN
  features of RGB and depth) read by `keras_olm.data.SunRGBDFeatures`, with
  MLP encoders instead of ResNet18.

Splits: the official training split is divided into `train` (fits the
weights), `dev` (the reader's seeded hold-out, `--dev-fraction`, read only
by OLM for its held-out losses) and `val` (`--val-fraction`, picks the
checkpoint: the epoch with the best fused validation accuracy, and feeds the
logit-norm diagnostics; for images the fit and val sample lists are written
to `<out-dir>/splits/`). The test split is scored once, at the end.

Depth enters the depth ResNet18 as one channel (metres / 8 m, the reader's
`depth_normalize="max"`); `--depth-channels 3` repeats it for 3-channel
encoders. Full-width ResNet18 (`--width 1`) is the default;
`--width 0.5` keeps ResNet18's block layout with narrower stages 2-4
(keras-hub requires 64 filters in stage 1).

Run (the default: two runs, each training two ResNet18 encoders for 6
epochs at 64x64; it took 6.5 to 7 minutes on 2 shared CPU cores with the
TensorFlow backend, with test accuracy RGB / Depth / RGB-D 0.675 / 0.264 /
0.805 without OLM and 0.839 / 0.429 / 0.933 with OLM). On CPU the
TensorFlow backend is much the fastest for these convolutions: an epoch of
the default data took 13-40 s with TensorFlow against about 115 s with
torch and 110-170 s with JAX (on shared cores), so with those backends on a
CPU use fewer epochs, `--width 0.5` or `--samples-per-class 40`, or a GPU:

    pip install -e ".[examples]"
    python examples/sunrgbd_depth.py
    KERAS_BACKEND=jax python examples/sunrgbd_depth.py --epochs 1 \\
        --samples-per-class 3 --image-size 32 --width 0.25 --blocks 1
    python examples/sunrgbd_depth.py --data-dir /data/SUNRGBD \\
        --image-size 224 --epochs 30
    python examples/sunrgbd_depth.py --features /data/sunrgbd_places
    python examples/sunrgbd_depth.py --no-olm   # the baseline only

Writes into `--out-dir` (default `outputs/sunrgbd_depth`):
`confusion_matrices.png` (rows: without / with OLM; columns: RGB, D,
RGB-D), `logit_norms_comparison.png`, `results.json`, and per run
(`baseline/`, `olm/`) the `LogitNormHistory` CSV and figures
(`logit_norms.png`, `accuracy.png`, `coefficients.png`, ...).
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import keras_olm
from keras_olm import callbacks as olm_callbacks
from keras_olm import data as olm_data

HEAD_TITLES = {"rgb": "RGB", "depth": "Depth", "fused": "RGB-D (fused)"}
RUN_TITLES = {"baseline": "joint training (no OLM)", "olm": "OLM"}


# --- data --------------------------------------------------------------


def _index_filter(indices, n):
    """A `filter` predicate keeping the elements whose index is listed."""
    mask = np.zeros(n, bool)
    mask[np.asarray(indices, int)] = True
    mask = tf.constant(mask)
    return lambda i, element: tf.gather(mask, i)


def _drop_index(i, element):
    return element


def _validation_indices(n, fraction, seed):
    """Seeded (train, val) index arrays over `range(n)`."""
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _split_validation(reader, fraction, seed):
    """Splits the reader's `train` split into (train, val), unbatched.

    For in-memory readers (features): the decoded samples are filtered by
    index. The reader's own `dev` split (OLM's held-out data) is already
    outside `train`, so train, dev, val and test are disjoint.
    """
    n = len(reader.samples("train"))
    train_idx, val_idx = _validation_indices(n, fraction, seed)
    base = reader.as_dataset(
        "train", batch_size=None, shuffle=False, training=False, prefetch=False
    ).enumerate()
    train = base.filter(_index_filter(train_idx, n)).map(_drop_index)
    val = base.filter(_index_filter(val_idx, n)).map(_drop_index)
    train = train.apply(tf.data.experimental.assert_cardinality(len(train_idx)))
    val = val.apply(tf.data.experimental.assert_cardinality(len(val_idx)))
    return train, val


def _sunrgbd_readers(root, args, size):
    """The SUN RGB-D reader, and one over the (fit, val) sample lists.

    The first reader reads the official split and holds out `dev` for OLM.
    The rest of its `train` split is cut (by `--seed`) into the samples
    that fit the weights and the validation samples; both lists are
    written as split files into `<out-dir>/splits/` and read by a second
    reader (its `train` and `test` splits), so that the training samples
    are shuffled before decoding and validation images are never decoded
    in a training pass.
    """
    options = dict(
        image_size=(size, size),
        depth_channels=args.depth_channels,
        use_bfx=args.use_bfx,
        seed=args.seed,
    )
    reader = olm_data.SunRGBD(
        root,
        split_file=args.split_file,
        dev_fraction=args.dev_fraction,
        **options,
    )
    ids = [r["id"] for r in reader.samples("train")]
    train_idx, val_idx = _validation_indices(
        len(ids), args.val_fraction, args.seed
    )
    folder = os.path.join(args.out_dir, "splits")
    os.makedirs(folder, exist_ok=True)
    lists = {}
    for name, indices in (("fit", train_idx), ("val", val_idx)):
        lists[name] = os.path.join(folder, f"{name}.txt")
        with open(lists[name], "w", encoding="utf-8") as f:
            f.writelines(ids[i] + "\n" for i in indices)
    fit_reader = olm_data.SunRGBD(
        root,
        split_file={"train": lists["fit"], "test": lists["val"]},
        dev_fraction=0.0,
        **options,
    )
    return reader, fit_reader


def load_data(args):
    """Builds the reader and the batched train / dev / val / test datasets.

    Args:
        args: the parsed command line.

    Returns:
        A dict with the datasets (`"train"`, `"dev"`, `"val"`, `"test"`),
        `"reader"`, `"class_names"`, `"input_shapes"` (modality -> shape
        without the batch axis), `"kind"` (`"images"` or `"features"`) and
        `"source"` (a description).
    """
    fit_reader = None
    if args.features:
        reader = olm_data.SunRGBDFeatures(
            args.features, dev_fraction=args.dev_fraction, seed=args.seed
        )
        kind, cache = "features", True
        source = f"features from {args.features}"
    else:
        root = args.data_dir
        if root is None:
            from keras_olm.datasets import rgbd_rooms

            root = rgbd_rooms.generate(
                samples_per_class=args.samples_per_class,
                image_size=args.image_size or 64,
                seed=args.data_seed,
            )
            source = (
                f"embedded RGB-D rooms ({args.samples_per_class} per class) "
                f"at {root}"
            )
        else:
            source = f"SUN RGB-D at {root}"
        size = args.image_size or (64 if args.data_dir is None else 224)
        reader, fit_reader = _sunrgbd_readers(root, args, size)
        kind = "images"
        # Decoded 64x64 images are small: decode once, keep in memory.
        cache = args.cache or args.data_dir is None
    if kind == "images":
        # Decoded, cached samples are shuffled in memory; otherwise the
        # reader shuffles the records (file names) before decoding.
        train = fit_reader.as_dataset(
            "train",
            batch_size=None,
            shuffle=not cache,
            seed=args.seed,
            prefetch=False,
        )
        val = fit_reader.as_dataset("test", batch_size=None, prefetch=False)
    else:
        train, val = _split_validation(reader, args.val_fraction, args.seed)
    dev = reader.as_dataset("dev", batch_size=None, prefetch=False)
    test = reader.as_dataset("test", batch_size=None, prefetch=False)
    n_train = int(train.cardinality())
    if cache:
        train, val, dev = train.cache(), val.cache(), dev.cache()
        train = train.shuffle(
            n_train, seed=args.seed, reshuffle_each_iteration=True
        )
    bs = args.batch_size
    datasets = {
        "train": train.batch(bs),
        "dev": dev.batch(bs),
        "val": val.batch(bs),
        "test": test.batch(bs),
    }
    datasets = {k: v.prefetch(tf.data.AUTOTUNE) for k, v in datasets.items()}
    spec = datasets["train"].element_spec[0]
    return {
        **datasets,
        "reader": reader,
        "class_names": list(reader.class_names),
        "input_shapes": {m: tuple(spec[m].shape[1:]) for m in spec},
        "kind": kind,
        "source": source,
        "sizes": {
            "train": n_train,
            "dev": len(reader.samples("dev")),
            "val": int(val.cardinality()),
            "test": len(reader.samples("test")),
        },
    }


# --- models ------------------------------------------------------------


def resnet18_encoder(image_shape, width=1.0, blocks=2, name="resnet18"):
    """ResNet18 (keras-hub `ResNetBackbone` config, random weights) + GAP.

    The configuration of keras-hub's `resnet_18_imagenet` preset: a 7x7
    stem with 64 filters, four stages of two basic blocks with strides
    1, 2, 2, 2 and 64, 128, 256, 512 filters, post-activation. `width`
    scales the filters of stages 2-4 (keras-hub requires 64 in stage 1);
    `blocks=1` gives the same layout with one block per stage (ResNet10),
    for quick smoke runs.

    Args:
        image_shape: tuple `(height, width, channels)`.
        width: float. Width multiplier of stages 2-4. Defaults to `1.0`.
        blocks: int. Basic blocks per stage. Defaults to `2` (ResNet18).
        name: str. The encoder's name.

    Returns:
        A `keras.Sequential` mapping images to `(batch, filters)` vectors.
    """
    import keras_hub

    filters = [64] + [max(64, int(round(f * width))) for f in (128, 256, 512)]
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=filters,
        stackwise_num_blocks=[blocks] * 4,
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=tuple(image_shape),
        name=f"{name}_backbone",
    )
    return keras.Sequential(
        [
            keras.Input(tuple(image_shape)),
            backbone,
            keras.layers.GlobalAveragePooling2D(),
        ],
        name=name,
    )


def mlp_encoder(input_shape, name="mlp"):
    """A two-layer MLP for pre-extracted feature vectors."""
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape)),
            keras.layers.Flatten(),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(256, activation="relu"),
        ],
        name=name,
    )


def build_model(data, args, balancer):
    """The late-fusion model with one encoder per modality."""
    encoders = {}
    for m, shape in data["input_shapes"].items():
        if data["kind"] == "images":
            encoders[m] = resnet18_encoder(
                shape, args.width, args.blocks, f"{m}_resnet18"
            )
        else:
            encoders[m] = mlp_encoder(shape, f"{m}_mlp")
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=len(data["class_names"]), balancer=balancer
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    return model


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


def train_and_test(data, args, name, balancer):
    """Trains one run, picks its checkpoint on `val`, scores `test` once.

    Returns:
        A dict with `"acc"` and `"mean_class_acc"` (head -> float),
        `"confusion"` (head -> (C, C) counts, rows = true class),
        `"best_epoch"`, `"seconds"` and the diagnostics CSV path.
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
        dev_data=data["dev"],
        epochs=args.epochs,
        callbacks=[diagnostics, best],
        verbose=args.verbose,
    )
    best.restore()
    logits = model.predict_heads(data["test"])
    labels = np.concatenate([y for _, y in data["test"].as_numpy_iterator()])
    num_classes = len(data["class_names"])
    result = {
        "acc": {},
        "mean_class_acc": {},
        "confusion": {},
        "best_epoch": best.best_epoch,
        "best_val_fused_acc": best.best,
        "diagnostics_csv": diagnostics.csv_path,
    }
    for head, values in logits.items():
        pred = values.argmax(-1)
        cm = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(cm, (labels, pred), 1)
        present = cm.sum(1) > 0
        recall = np.diag(cm)[present] / cm.sum(1)[present]
        result["acc"][head] = float(np.mean(pred == labels))
        result["mean_class_acc"][head] = float(recall.mean())
        result["confusion"][head] = cm
    result["seconds"] = time.perf_counter() - start
    return result


# --- reporting ---------------------------------------------------------


def format_table(results, heads, metric="acc"):
    """The per-head test metric of every run as a Markdown table."""
    lines = [
        "| run | " + " | ".join(HEAD_TITLES.get(h, h) for h in heads) + " |",
        "|---" * (len(heads) + 1) + "|",
    ]
    for name, result in results.items():
        cells = " | ".join(f"{result[metric][h]:.3f}" for h in heads)
        lines.append(f"| {RUN_TITLES.get(name, name)} | {cells} |")
    return "\n".join(lines)


def plot_confusion_grid(results, heads, class_names, path):
    """Fig. 4 analogue: row-normalised confusion matrices, runs x heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(results), len(heads)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(6 * cols + 1, 6 * rows),
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
                f"{RUN_TITLES.get(name, name)}: {HEAD_TITLES.get(head, head)}"
                f"\naccuracy {result['acc'][head]:.3f}",
                fontsize=9,
            )
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels(class_names, rotation=90, fontsize=6)
            ax.set_yticklabels(class_names, fontsize=6)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the true class")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        help="a SUN RGB-D copy; without it, the embedded RGB-D rooms",
    )
    source.add_argument(
        "--features", help="pre-extracted SUN RGB-D features (MLP encoders)"
    )
    parser.add_argument(
        "--split-file",
        help="allsplit.mat; without it, the reader looks in the root",
    )
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=80,
        help="embedded rooms: samples per class (half train, half test)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="embedded rooms: seed"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input size; None: 64 embedded, 224 SUN RGB-D",
    )
    parser.add_argument(
        "--depth-channels",
        type=int,
        choices=(1, 3),
        default=1,
        help="3 repeats depth for 3-channel encoders",
    )
    parser.add_argument(
        "--use-bfx", action="store_true", help="read inpainted depth_bfx/"
    )
    parser.add_argument(
        "--width",
        type=float,
        default=1.0,
        help="ResNet18 width multiplier of stages 2-4 (1 = ResNet18)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=2,
        help="basic blocks per stage (2 = ResNet18; 1 for smoke runs)",
    )
    parser.add_argument("--epochs", type=int, default=6, help="per run")
    parser.add_argument("--batch-size", type=int, default=32, help="per step")
    parser.add_argument(
        "--learning-rate", type=float, default=1e-3, help="Adam"
    )
    parser.add_argument(
        "--dev-fraction",
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
        "--cache", action="store_true", help="keep decoded images in memory"
    )
    parser.add_argument("--no-olm", action="store_true", help="baseline only")
    parser.add_argument(
        "--out-dir", default="outputs/sunrgbd_depth", help="figures, CSV"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="weights, splits, shuffling"
    )
    parser.add_argument(
        "--verbose", type=int, default=2, help="Keras fit verbosity"
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the example; returns `{run: result}` (see `train_and_test`)."""
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    data = load_data(args)
    print(
        f"backend: {keras.backend.backend()} | data: {data['source']} | "
        f"splits: {data['sizes']} | inputs: {data['input_shapes']}"
    )
    runs = [("baseline", None)]
    if not args.no_olm:
        runs.append(("olm", "olm"))
    results = {}
    for name, balancer in runs:
        print(f"--- {RUN_TITLES[name]} ---")
        result = train_and_test(data, args, name, balancer)
        results[name] = result
        print(
            f"checkpoint: epoch {result['best_epoch']} (validation fused "
            f"accuracy {result['best_val_fused_acc']:.3f}); "
            f"{result['seconds']:.0f} s"
        )
    heads = [*data["input_shapes"], "fused"]
    table = format_table(results, heads, "acc")
    mean_table = format_table(results, heads, "mean_class_acc")
    print("\nTest accuracy:")
    print(table)
    print("\nTest mean class accuracy:")
    print(mean_table)
    figures = {
        "confusion": plot_confusion_grid(
            results,
            heads,
            data["class_names"],
            os.path.join(args.out_dir, "confusion_matrices.png"),
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
    print(f"\nFigures: {', '.join(str(p) for p in figures.values())}")
    print(f"Total time: {seconds:.0f} s")
    return {
        "runs": results,
        "table": table,
        "sizes": data["sizes"],
        "figures": figures,
    }


if __name__ == "__main__":
    main()
