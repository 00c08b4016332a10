"""RGB + depth scene classification (SUN RGB-D, 19 classes) with OLM.

The main job of keras-olm: two ResNet18 encoders (one for RGB, one for
depth) built from keras-hub's `ResNetBackbone` configuration with random
weights (nothing is downloaded), late fusion, and OLM against plain joint
training and against the same heads without modulation (`"heads"`, the
reference for what the modulation adds). The runs use the same seed, the
same data and the same splits; the example prints every head's test
accuracy (RGB, Depth, RGB-D fused) for each, OLM's paired differences
from both references (per seed with `--seeds`), and draws the analogue of
Fig. 4 of Zong et al. (IJCAI 2024): the confusion matrices of RGB, D and
RGB-D of every run.

Data (every split comes from the repository's readers):

- default: the embedded RGB-D rooms (`keras_olm.embedded.rgbd_rooms`, 19
  classes x 80 samples at 64x64, generated once into the cache and read by
  `keras_olm.data.SunRGBD` exactly as a real SUN RGB-D copy);
- `--data-dir DIR`: a real SUN RGB-D copy (sensor folders plus
  `allsplit.mat`, or `train.txt`/`test.txt`; see `keras_olm.data.SunRGBD`)
  at 224x224 by default (`--image-size`); meant for a GPU;
- `--features DIR`: pre-extracted features (the paper used Places-CNN
  features of RGB and depth) read by `keras_olm.data.SunRGBDFeatures`, with
  MLP encoders instead of ResNet18.

Splits: the official training split is divided into `train` (fits the
weights), `held_out` (the reader's seeded hold-out,
`--held-out-fraction`, read only by OLM for its held-out losses) and `val`
(`--val-fraction`, picks the
checkpoint: the epoch with the best fused validation accuracy, and feeds the
logit-norm diagnostics; for images the fit and val sample lists are written
to `<out-dir>/splits/`). The test split is scored once, at the end.

Depth enters the depth ResNet18 as one channel (metres / 8 m, the reader's
`depth_normalize="max"`); `--depth-channels 3` repeats it for 3-channel
encoders. Full-width ResNet18 (`--width 1`) is the default;
`--width 0.5` keeps ResNet18's block layout with narrower stages 2-4
(keras-hub requires 64 filters in stage 1).

Run (the default: three runs, joint training, heads and OLM, each
training two ResNet18 encoders for 6 epochs at 64x64; its accuracies and
times are in `examples/README.md`: on one CPU core about 10 minutes with
TensorFlow, 1.4 times that with torch and 1.5 times with JAX). Under
JAX on a CPU-only machine it sets
`XLA_FLAGS=--xla_disable_hlo_passes=algsimp` unless `XLA_FLAGS` is set
(the README's backend section says why). Quicker runs: fewer epochs,
`--width 0.5` or `--samples-per-class 40`, or a GPU:

    pip install -e ".[examples]"
    python examples/sunrgbd_depth.py
    KERAS_BACKEND=jax python examples/sunrgbd_depth.py --epochs 1 \\
        --samples-per-class 3 --image-size 32 --width 0.25 --blocks 1
    python examples/sunrgbd_depth.py --data-dir /data/SUNRGBD \\
        --image-size 224 --epochs 30
    python examples/sunrgbd_depth.py --features /data/sunrgbd_places
    python examples/sunrgbd_depth.py --no-olm   # the baseline only

Writes into `--out-dir` (default `outputs/sunrgbd_depth`):
`confusion_matrices.png` (rows: joint training, heads, OLM; columns: RGB, D,
RGB-D), `logit_norms_comparison.png`, `results.json`, and per run
(`baseline/`, `heads/`, `olm/`) the `LogitNormHistory` CSV and figures
(`logit_norms.png`, `accuracy.png`, `coefficients.png`, ...).
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_olm import data as olm_data

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (examples/_common.py)

HEAD_TITLES = {"rgb": "RGB", "depth": "Depth", "fused": "RGB-D (fused)"}


# --- data --------------------------------------------------------------


def _index_filter(indices, n):
    """A `filter` predicate keeping the elements whose index is listed."""
    mask = np.zeros(n, bool)
    mask[np.asarray(indices, int)] = True
    mask = tf.constant(mask)
    return lambda i, element: tf.gather(mask, i)


def _drop_index(i, element):
    return element


def _split_validation(reader, fraction, seed):
    """Splits the reader's `train` split into (train, val), unbatched.

    For in-memory readers (features): the decoded samples are filtered by
    index. The reader's own `held_out` split (OLM's held-out data) is already
    outside `train`, so train, held_out, val and test are disjoint.
    """
    n = len(reader.samples("train"))
    train_idx, val_idx = _common.validation_indices(n, fraction, seed)
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

    The first reader reads the official split and holds out `held_out` for OLM.
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
        cache=_common.reader_cache(args, embedded=args.data_dir is None),
    )
    reader = olm_data.SunRGBD(
        root,
        split_file=args.split_file,
        held_out_fraction=args.held_out_fraction,
        **options,
    )
    ids = [r["id"] for r in reader.samples("train")]
    train_idx, val_idx = _common.validation_indices(
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
        held_out_fraction=0.0,
        **options,
    )
    return reader, fit_reader


def load_data(args):
    """Builds the reader and the batched train / held_out / val / test datasets.

    Args:
        args: the parsed command line.

    Returns:
        A dict with the datasets (`"train"`, `"held_out"`, `"val"`, `"test"`),
        `"reader"`, `"class_names"`, `"input_shapes"` (modality -> shape
        without the batch axis), `"kind"` (`"images"` or `"features"`) and
        `"source"` (a description).
    """
    fit_reader = None
    if args.features:
        reader = olm_data.SunRGBDFeatures(
            args.features,
            held_out_fraction=args.held_out_fraction,
            seed=args.seed,
        )
        kind, cache = "features", True
        source = f"features from {args.features}"
    else:
        root = args.data_dir
        if root is None:
            from keras_olm.embedded import rgbd_rooms

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
        # The readers cache the decoded images (`--cache`).
        cache = False
    if kind == "images":
        train = fit_reader.as_dataset(
            "train", batch_size=None, seed=args.seed, prefetch=False
        )
        val = fit_reader.as_dataset("test", batch_size=None, prefetch=False)
    else:
        train, val = _split_validation(reader, args.val_fraction, args.seed)
    splits = {
        "train": train,
        "val": val,
        "held_out": reader.as_dataset(
            "held_out", batch_size=None, prefetch=False
        ),
        "test": reader.as_dataset("test", batch_size=None, prefetch=False),
    }
    return _common.batch_datasets(
        reader,
        splits,
        args.batch_size,
        cache,
        args.seed,
        kind=kind,
        source=source,
    )


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
    return _common.compile_model(
        encoders, len(data["class_names"]), balancer, args.learning_rate
    )


def parse_args(argv=None):
    parser = _common.make_parser(__doc__)
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
    _common.add_training_args(parser, "outputs/sunrgbd_depth", epochs=6)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the example; returns what `_common.run_comparison` returns."""
    return _common.main(argv, parse_args, load_data, build_model, HEAD_TITLES)


if __name__ == "__main__":
    _common.apply_cpu_settings()
    main()
