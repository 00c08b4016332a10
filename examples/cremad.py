"""Audio-visual classification (CREMA-D layout): OLM against its references.

Two small CNN encoders, one on the log spectrogram of the audio and one on
a video frame, late fusion, and OLM against plain joint training and the
same heads without modulation: the same seed, data and splits for every
run. The example prints every head's test accuracy (Audio, Visual, AV
fused) for each, OLM's paired differences from both references, and draws
the confusion matrices of each head for every run (as Fig. 4 of Zong et al.,
IJCAI 2024, does for SUN RGB-D) and the per-class logit norms over epochs
(Fig. 5).

Data (both read by `keras_olm.data.CremaD`, in CREMA-D's on-disk layout):

- default: the embedded audio-visual digits
  (`keras_olm.embedded.av_digits`: 1,797 real handwritten digits from
  scikit-learn paired with the digit's name spoken by espeak-ng, ~0.7 s
  clips at 22,050 Hz, 32x32 frames, split by speaker; 10 classes, labels
  `av_digits.LABELS`), generated once into the cache (about 20 s). Audio
  is the dominant modality there. Spectrograms use the smaller "digits"
  convention below, frames stay 32x32;
- `--data-dir DIR`: a CREMA-D copy (`AudioWAV/`, `Image-01-FPS/`,
  `train.csv`, `test.csv`; 6 emotions NEU HAP SAD FEA DIS ANG), with
  OGM-GE's "cremad" spectrogram (22,050 Hz, 3 s, n_fft 512, hop 353:
  257 x 188) and one 224x224 frame per clip; meant for a GPU.

Spectrograms (`--audio`):

- `digits` (embedded default): 22,050 Hz, 1.5 s (the clip, tiled), n_fft
  512, hop 353, projected on 64 mel bands, log, per-clip z-score:
  64 x 94;
- `cremad` (`--data-dir` default): the CREMA-D preset of
  `keras_olm.data.audio`, 257 x 188 (log magnitude, no z-score).

Splits: the official `train.csv` is divided into `train` (fits the
weights), `held_out` (the reader's seeded hold-out,
`--held-out-fraction`, read only by OLM for its held-out losses) and `val`
(`--val-fraction`, picks the
checkpoint, the epoch with the best fused validation accuracy, and feeds
the logit-norm diagnostics); the fit and val clip lists are written as
`<out-dir>/splits/train.csv` and `test.csv`. `test.csv` is scored once,
at the end.

Encoders: `--stages` blocks of 3x3 convolution, batch normalisation, ReLU
and 2x2 max pooling with `--width`, 2x, 4x, ... filters, then global
average pooling and dropout; the first layer batch-normalises the raw
input. AdamW (`--learning-rate`, `--weight-decay`).

Run (the default: two runs of 10 epochs on the embedded digits; measured
times are in examples/README.md):

    pip install -e ".[speech]"   # espeak-ng for the digits, scikit-learn
    python examples/cremad.py
    KERAS_BACKEND=jax python examples/cremad.py
    python examples/cremad.py --data-dir /data/CREMA-D --epochs 30 \\
        --width 32
    python examples/cremad.py --no-olm   # the baseline only

Writes into `--out-dir` (default `outputs/cremad`):
`confusion_matrices.png` (rows: joint training, heads, OLM; columns: Audio,
Visual, AV), `logit_norms_comparison.png`, `results.json`, and per run
(`baseline/`, `heads/`, `olm/`) the `LogitNormHistory` CSV and figures
(`logit_norms.png`, `accuracy.png`, `coefficients.png`, ...).
"""

import os
import sys

import keras

from keras_olm import data as olm_data
from keras_olm.data.audio import AUDIO_PRESETS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (examples/_common.py)

HEAD_TITLES = {"audio": "Audio", "visual": "Visual", "fused": "AV (fused)"}


# --- data --------------------------------------------------------------


def _write_split(path, records, class_names):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{r['id']},{class_names[r['label']]}\n" for r in records)


def cremad_readers(root, args, class_names, audio, size):
    """The CREMA-D reader, and one over the (fit, val) clip lists.

    The first reader reads `train.csv` / `test.csv` and holds out `held_out`
    for OLM. The rest of its `train` split is cut (by `--seed`) into the
    clips that fit the weights and the validation clips, written as
    `<out-dir>/splits/train.csv` and `test.csv` and read by a second
    reader, so that validation clips are never decoded in a training pass.

    Returns:
        A tuple `(reader, fit_reader)`.
    """
    options = dict(
        class_names=class_names,
        audio=audio,
        image_size=(size, size),
        seed=args.seed,
        cache=_common.reader_cache(args, embedded=args.data_dir is None),
    )
    reader = olm_data.CremaD(
        root, held_out_fraction=args.held_out_fraction, **options
    )
    records = reader.samples("train")
    fit_idx, val_idx = _common.validation_indices(
        len(records), args.val_fraction, args.seed
    )
    folder = os.path.join(args.out_dir, "splits")
    os.makedirs(folder, exist_ok=True)
    for name, indices in (("train", fit_idx), ("test", val_idx)):
        _write_split(
            os.path.join(folder, f"{name}.csv"),
            [records[i] for i in indices],
            reader.class_names,
        )
    fit_reader = olm_data.CremaD(
        root, split_dir=folder, held_out_fraction=0.0, **options
    )
    return reader, fit_reader


def load_data(args):
    """Builds the readers and the batched train / held_out / val / test sets.

    Args:
        args: the parsed command line.

    Returns:
        The dict of `_common.batch_datasets`, with `"source"` (a
        description) and `"audio"` (the `SpectrogramConfig`).
    """
    if args.data_dir is None:
        from keras_olm.embedded import av_digits

        # Options left at None take the generator's defaults.
        knobs = {
            "num_speakers": args.num_speakers,
            "snr_db": args.snr_db,
            "image_noise": args.image_noise,
        }
        root = av_digits.generate(
            num_clips=args.num_clips,
            **{k: v for k, v in knobs.items() if v is not None},
            seed=args.data_seed,
        )
        class_names = av_digits.LABELS
        source = f"embedded AV digits at {root}"
        audio = AUDIO_PRESETS[args.audio or "digits"]
        size = args.image_size or 32
    else:
        root = args.data_dir
        class_names = olm_data.CREMAD_CLASSES
        source = f"CREMA-D at {root}"
        audio = AUDIO_PRESETS[args.audio or "cremad"]
        size = args.image_size or 224
    # The readers cache the decoding (`--cache`); frames and crops are
    # drawn per epoch after it.
    reader, fit_reader = cremad_readers(root, args, class_names, audio, size)
    splits = {
        "train": fit_reader.as_dataset(
            "train", batch_size=None, seed=args.seed, prefetch=False
        ),
        "val": fit_reader.as_dataset("test", batch_size=None, prefetch=False),
        "held_out": reader.as_dataset(
            "held_out", batch_size=None, prefetch=False
        ),
        "test": reader.as_dataset("test", batch_size=None, prefetch=False),
    }
    return _common.batch_datasets(
        reader,
        splits,
        args.batch_size,
        False,
        args.seed,
        source=source,
        audio=audio,
    )


# --- models ------------------------------------------------------------


def cnn_encoder(input_shape, width=16, stages=4, dropout=0.5, name="cnn"):
    """A small CNN: input batch norm, `stages` conv blocks, GAP, dropout.

    Block `i` is a 3x3 convolution with `width * 2**i` filters, batch
    normalisation, ReLU and 2x2 max pooling.

    Args:
        input_shape: tuple `(height, width, channels)`.
        width: int. Filters of the first block. Defaults to `16`.
        stages: int. Number of blocks. Defaults to `4`.
        dropout: float. Dropout rate of the pooled features. Defaults to
            `0.5`.
        name: str. The encoder's name.

    Returns:
        A `keras.Sequential` mapping inputs to `(batch, width *
        2**(stages - 1))` vectors.
    """
    # Momentum 0.9: the running statistics settle within an epoch of a
    # small dataset (Keras' default 0.99 needs hundreds of steps).
    layers = [
        keras.Input(tuple(input_shape)),
        keras.layers.BatchNormalization(momentum=0.9),
    ]
    for i in range(stages):
        layers += [
            keras.layers.Conv2D(
                width * 2**i, 3, padding="same", use_bias=False
            ),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2, padding="same"),
        ]
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(dropout),
    ]
    return keras.Sequential(layers, name=name)


def build_model(data, args, balancer):
    """The late-fusion model with one CNN encoder per modality."""
    encoders = {
        m: cnn_encoder(
            shape, args.width, args.stages, args.dropout, name=f"{m}_cnn"
        )
        for m, shape in data["input_shapes"].items()
    }
    return _common.compile_model(
        encoders,
        len(data["class_names"]),
        balancer,
        args.learning_rate,
        args.weight_decay,
    )


def parse_args(argv=None):
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--data-dir",
        help="a CREMA-D copy; without it, the embedded AV digits",
    )
    parser.add_argument(
        "--audio",
        choices=sorted(AUDIO_PRESETS),
        default=None,
        help="spectrogram convention; None: digits embedded, cremad real",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square frame size; None: 32 embedded, 224 CREMA-D",
    )
    parser.add_argument(
        "--num-clips",
        type=int,
        default=None,
        help="embedded digits: number of clips (None: all 1,797)",
    )
    parser.add_argument(
        "--num-speakers",
        type=int,
        default=None,
        help="embedded digits: distinct voices (split by voice; default: "
        "the generator's, 16)",
    )
    parser.add_argument(
        "--snr-db",
        type=float,
        default=None,
        help="embedded digits: audio SNR in dB against pink noise "
        "(default: the generator's, 15)",
    )
    parser.add_argument(
        "--image-noise",
        type=float,
        default=None,
        help="embedded digits: std of the frames' Gaussian noise "
        "(default: the generator's, 0.1)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="embedded digits: seed"
    )
    parser.add_argument(
        "--width", type=int, default=16, help="filters of the first block"
    )
    parser.add_argument(
        "--stages", type=int, default=4, help="conv + pool blocks"
    )
    parser.add_argument(
        "--dropout", type=float, default=0.5, help="of the pooled features"
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.05, help="AdamW; 0: Adam"
    )
    _common.add_training_args(parser, "outputs/cremad", epochs=10)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the example; returns what `_common.run_comparison` returns."""
    return _common.main(argv, parse_args, load_data, build_model, HEAD_TITLES)


if __name__ == "__main__":
    _common.apply_cpu_settings()
    main()
