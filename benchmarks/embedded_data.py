"""Data, splits and encoders shared by the embedded-set benchmarks.

`compare.py` (the Table 1 analogue) and `imbalance.py` (how imbalanced
the embedded sets are) read the same decoded arrays, cut the same splits
and build the same small CNN encoders from here, so that their figures
can be set side by side.

Data (decoded once by the package's readers and cached as `.npz` under
`$KERAS_OLM_CACHE`, default `~/.cache/keras_olm`, named after the
generated dataset's directory, whose name holds the generator's version
and a hash of its parameters):

- `digits`: the embedded audio-visual digits
  (`keras_olm.embedded.av_digits.generate`, read by `keras_olm.data.CremaD`
  in the CREMA-D layout): a 64 x 94 log-mel spectrogram and one 32x32
  frame per clip, 10 classes, split by speaker.
- `rooms`: the embedded RGB-D rooms (`keras_olm.embedded.rgbd_rooms`, read
  by `keras_olm.data.SunRGBD`) at 32x32, 19 scene classes.
"""

import os

import keras
import numpy as np

DATASET_TITLES = {"digits": "AV digits", "rooms": "RGB-D rooms"}


def _read_split(reader, split):
    xs = {m: [] for m in reader.modalities}
    ys = []
    batches = reader.as_dataset(
        split, batch_size=128, shuffle=False, training=False
    )
    for x, y in batches.as_numpy_iterator():
        for m in xs:
            xs[m].append(x[m])
        ys.append(y)
    return {m: np.concatenate(v) for m, v in xs.items()}, np.concatenate(ys)


def _generate_digits(size, **kwargs):
    from keras_olm.embedded import av_digits

    if size is not None:
        kwargs = {"num_clips": size, "num_speakers": 8, **kwargs}
    return av_digits.generate(verbose=False, **kwargs)


def _read_digits(root):
    from keras_olm import data as olm_data
    from keras_olm.embedded import av_digits

    return olm_data.CremaD(
        root,
        class_names=av_digits.LABELS,
        audio="digits",
        image_size=(32, 32),
        held_out_fraction=0.0,
    )


def _generate_rooms(size, **kwargs):
    from keras_olm.embedded import rgbd_rooms

    kwargs = {"samples_per_class": size or 80, **kwargs}
    return rgbd_rooms.generate(verbose=False, **kwargs)


def _read_rooms(root):
    from keras_olm import data as olm_data

    return olm_data.SunRGBD(root, image_size=(32, 32), held_out_fraction=0.0)


# name: (generate(size, **kwargs) -> root, reader of a root)
DATASETS = {
    "digits": (_generate_digits, _read_digits),
    "rooms": (_generate_rooms, _read_rooms),
}


def load_dataset(name, size=None, **generate_kwargs):
    """Decoded arrays of one embedded dataset, cached as `.npz`.

    The dataset is generated first if it is not in the cache; the `.npz`
    is named after the generated directory, so a generator whose version
    or parameters change gets a fresh `.npz`.

    Args:
        name: str. `"digits"` or `"rooms"`.
        size: int or `None`. A smaller generated set: clips (`digits`, then
            8 speakers) or samples per class (`rooms`). `None` for the
            defaults (1,797 clips; 80 rooms per class).
        **generate_kwargs: other arguments of the generator's `generate`.

    Returns:
        A dict with `"train"` and `"test"` (each `(inputs dict, labels)`),
        `"modalities"`, `"num_classes"` and `"root"` (the generated
        dataset's directory).
    """
    generate, read = DATASETS[name]
    root = generate(size, **generate_kwargs)
    path = os.path.join(root.parent, f"compare-{root.name}.npz")
    if not os.path.exists(path):
        reader = read(root)
        arrays = {}
        for split in ("train", "test"):
            x, y = _read_split(reader, split)
            arrays.update({f"{split}/{m}": v for m, v in x.items()})
            arrays[f"{split}/label"] = y
        arrays["num_classes"] = np.array(len(reader.class_names))
        arrays["modalities"] = np.array(list(reader.modalities))
        tmp = path + f".tmp-{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    with np.load(path) as f:
        modalities = [str(m) for m in f["modalities"]]
        out = {
            split: (
                {m: f[f"{split}/{m}"] for m in modalities},
                f[f"{split}/label"].astype("int32"),
            )
            for split in ("train", "test")
        }
        out["modalities"] = modalities
        out["num_classes"] = int(f["num_classes"])
    out["root"] = str(root)
    return out


def _take(split, indices):
    x, y = split
    return {m: v[indices] for m, v in x.items()}, y[indices]


def make_splits(data, val_fraction=0.15, max_train=None, max_eval=None):
    """The training pool, `held_out`, `val` and `test` (fixed, seed 0).

    `held_out` is 10% of the official training split after `val`, read
    only by balancers that measure held-out losses.

    Args:
        data: the dict of `load_dataset`.
        val_fraction: float. Share of the official training split that
            picks the checkpoint. Defaults to `0.15`.
        max_train: int or `None`. Keep at most this many pool samples
            (smoke runs). Defaults to `None`.
        max_eval: int or `None`. Keep at most this many `val` and test
            samples. Defaults to `None`.
    """
    n = len(data["train"][1])
    order = np.random.default_rng(0).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    val_idx, pool_idx = order[:n_val], order[n_val:]
    n_held_out = max(1, int(round(0.1 * len(pool_idx))))
    held_out_idx, pool_idx = pool_idx[:n_held_out], pool_idx[n_held_out:]
    test_idx = np.arange(len(data["test"][1]))
    if max_train is not None:
        pool_idx = pool_idx[:max_train]
    if max_eval is not None:
        val_idx = val_idx[:max_eval]
        test_idx = np.random.default_rng(0).permutation(test_idx)[:max_eval]
    return {
        "pool": _take(data["train"], pool_idx),
        "held_out": _take(data["train"], held_out_idx),
        "val": _take(data["train"], val_idx),
        "test": _take(data["test"], test_idx),
    }


def cnn_encoder(width, stages, name, kernel_regularizer=None, dropout=0.0):
    """2x2 average pooling, input batch norm, strided conv blocks, pooling.

    The average pooling halves the inputs (spectrograms to 32 x 47, frames
    to 16x16: less noise on noisy frames, and a quarter of the work).
    Block i is a 3x3 convolution with `width * 2**i` filters and stride 2,
    batch norm and ReLU (then dropout of rate `dropout`, if > 0); global
    average pooling gives a `width * 2**(stages - 1)` vector.
    `kernel_regularizer` (e.g. `keras.regularizers.L2(1e-4)`) goes on
    every convolution's kernel.
    """
    # Momentum 0.9: the moving statistics must track the weights within the
    # few hundred steps of a run, or validation scores lag training.
    layers = [
        keras.layers.AveragePooling2D(2, padding="same", name=f"{name}_pool"),
        keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_in_bn"),
    ]
    for i in range(stages):
        layers += [
            keras.layers.Conv2D(
                width * 2**i,
                3,
                strides=2,
                padding="same",
                use_bias=False,
                kernel_regularizer=kernel_regularizer,
                name=f"{name}_conv{i}",
            ),
            keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}"),
            keras.layers.ReLU(name=f"{name}_relu{i}"),
        ]
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"{name}_drop{i}"))
    layers.append(keras.layers.GlobalAveragePooling2D(name=f"{name}_gap"))
    return keras.Sequential(layers, name=name)


def write_readme(section, path, heading):
    """Replaces (or appends) the section under `heading` (a `## ...`
    line) of the Markdown file at `path` with `section`."""
    text = "# Benchmarks\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        tail = "" if end < 0 else text[end:]
        text = text[:start] + section.rstrip("\n") + "\n" + tail
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def add_data_arguments(parser):
    """The encoder, optimizer and data-size options `compare.py` and
    `imbalance.py` share."""
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--max-train", type=int, default=None, help="cap on the pool"
    )
    parser.add_argument(
        "--max-eval", type=int, default=None, help="cap on val and test"
    )
    parser.add_argument(
        "--digits-clips",
        type=int,
        default=None,
        help="generate a smaller AV digits set (default: all 1,797)",
    )
    parser.add_argument(
        "--rooms-per-class",
        type=int,
        default=None,
        help="generate a smaller RGB-D rooms set (default: 80)",
    )
