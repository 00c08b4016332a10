"""Input-pipeline throughput, and the input wait of a training step.

Two measurements on the same CREMA-D-layout files, in one run:

1. Samples per second of `keras_olm.data.CremaD`'s tf.data pipeline
   against a per-sample loader doing the same preprocessing with librosa
   and PIL. Both produce, per clip, the CREMA-D spectrogram (22,050 Hz,
   3 s, n_fft 512, hop 353: 257 x 188, `log(|STFT| + 1e-7)`) and one
   224x224 frame normalised with the ImageNet mean and std, in batches.

   - tf.data: the reader's `as_dataset` as a user gets it (parallel
     decode map, batching, the batched STFT after `.batch()`, prefetch),
     evaluation mode (fixed middle frame), no shuffle.
   - per-sample: what a user without keras-olm writes: one clip at a
     time in one Python process, `librosa.load(sr=22050)` (soxr
     resampling), tile to 3 s, `librosa.stft`, log; `PIL.Image.open`,
     `resize((224, 224), BILINEAR)`, normalise; `np.stack` per batch.

   The files are generated once: `--clips` clips of 2-3 s of noisy tones
   as 16-bit WAV at `--file-rate` (CREMA-D ships 16 kHz, so both loaders
   resample) and three 480x360 JPEG frames per clip (CREMA-D's video
   size; 1 fps). One untimed pass first warms the page cache and traces
   the pipeline, then each loader runs `--repeats` full passes,
   alternating; the table gives the median pass. The two outputs are
   compared sample by sample (max abs difference): the log spectrograms
   agree to float32 rounding on the bins below 90% of the files' Nyquist
   frequency (typically 1e-5; the largest differences, about 1e-2, are
   in the clips' weakest bins). Above it the 16 kHz files have no
   content, |STFT| sits near the float32 floor of the resampler's
   stopband and the logs of two float32 FFTs differ by up to a few units,
   so both figures are printed. The frames differ by the resize filter
   (PIL's BILINEAR widens its kernel when shrinking, `tf.image.resize`
   samples without antialiasing) and by the JPEG IDCT variant, so their
   mean absolute difference is printed too.

   The tf.data pipeline is built once (as a training loop builds it) and
   iterated anew for each pass, so the timing holds no re-tracing of its
   functions.

   Then each stage of both loaders is timed alone on one thread (CPU time
   per sample), with the whole of each loader. Since tf.data can decode at
   most as many samples at once as there are cores, its lead over the
   one-thread loop is bounded by cores x (loop's CPU per sample) /
   (tf.data's CPU per sample); the script prints that bound.

2. Input wait during `fit`, per epoch, without and with the reader's
   cache. Keras' trainers fetch the next batch inside the step on some
   backends (TensorFlow runs `next(iterator)` in the traced function) and
   between steps on others, so callbacks cannot separate the wait
   portably. Instead the same model (the two CNN encoders of
   `examples/cremad.py` at these input sizes, late fusion, OLM with the
   reader's `held_out` split as held-out data) is fitted from the same
   initial weights: once fed from memory (an in-memory `.cache()` of the
   pipeline's own output, filled in an untimed epoch; its median step
   over the other epochs is the step with no input cost), then in
   `--pairs` alternated pairs of fits fed by `CremaD(cache=None)` and by
   `CremaD(cache="memory")` (new readers and datasets each time, so each
   cached fit fills its cache in its own first epoch). For each epoch,

       input wait = (step of that epoch - step from memory)
                    / step of that epoch,

   with the step time the epoch's wall time over its steps (the median
   over the pairs), and samples/s = batch size / step. Epoch 1 includes
   tracing for both (and filling the cache for the cached one), so its
   wait is not an input wait; compare epoch 1 between the two instead.
   With `--skip-throughput`, only this part runs.

   On a CPU-only machine this counts the CPU the pipeline takes from
   training too (both share the cores), which is the cost a user sees
   there; on a GPU the decoding overlaps the device's work.

Run (one line; prints the markdown table for benchmarks/README.md):

    python benchmarks/input_pipeline.py

Targets: tf.data >= 5x the per-sample loader; with the cache, input wait
< 5% of the step from epoch 2 on, and epoch 1 unchanged within noise.
"""

import argparse
import math
import os
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_olm import data as olm_data
from keras_olm.data.image import IMAGENET_MEAN
from keras_olm.data.image import IMAGENET_STD

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"),
)
import cremad  # noqa: E402  (examples/cremad.py: the CNN encoders)

LABELS = olm_data.CREMAD_CLASSES


# --- files -------------------------------------------------------------


def write_dataset(root, clips, file_rate, seed=0):
    """Writes `clips` clips in the CREMA-D layout under `root`.

    Audio: 2-3 s of a random tone plus noise, 16-bit PCM at `file_rate`.
    Frames: three 480x360 JPEGs per clip (smooth colour fields plus noise,
    so that JPEG decoding does real work). A fifth of the clips go to
    `test.csv`.
    """
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "AudioWAV"), exist_ok=True)
    rows = []
    for i in range(clips):
        label = LABELS[i % len(LABELS)]
        clip = f"{1001 + i % 91}_{i:04d}_{label}_XX"
        n = int(rng.uniform(2.0, 3.0) * file_rate)
        t = np.arange(n) / file_rate
        wave = 0.4 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        wave += 0.05 * rng.standard_normal(n)
        soundfile.write(
            os.path.join(root, "AudioWAV", f"{clip}.wav"),
            wave.astype(np.float32),
            file_rate,
            subtype="PCM_16",
        )
        folder = os.path.join(root, "Image-01-FPS", clip)
        os.makedirs(folder, exist_ok=True)
        for k in range(3):
            base = rng.uniform(0, 255, (9, 12, 3)).astype(np.uint8)
            image = Image.fromarray(base).resize((480, 360), Image.BICUBIC)
            pixels = np.asarray(image, np.float32)
            pixels += rng.normal(0, 8, pixels.shape)
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(
                os.path.join(folder, f"{k + 1:05d}.jpg"), quality=90
            )
        rows.append(f"{clip},{label}\n")
    n_test = len(rows) // 5
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.writelines(rows[n_test:])
    with open(os.path.join(root, "test.csv"), "w") as f:
        f.writelines(rows[:n_test])
    return root


# --- the per-sample loader ----------------------------------------------


def librosa_wave(path, config):
    """Reads, resamples (soxr, in `librosa.load`), tiles and clips a clip."""
    import librosa

    wave, _ = librosa.load(path, sr=config.sample_rate)
    repeats = max(1, math.ceil(config.num_samples / len(wave)))
    wave = np.tile(wave, repeats)[: config.num_samples]
    return np.clip(wave, -1.0, 1.0)


def librosa_spectrogram(wave, config):
    """`log(|librosa.stft| + offset)`, `(freq, time)` float32."""
    import librosa

    stft = librosa.stft(wave, n_fft=config.n_fft, hop_length=config.hop_length)
    return np.log(np.abs(stft) + config.log_offset).astype(np.float32)


def pil_frame(path, image_size):
    """Opens, resizes (PIL bilinear) and ImageNet-normalises one frame."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize(
            image_size[::-1], Image.Resampling.BILINEAR
        )
        pixels = np.asarray(image, np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def middle_frame(record):
    """The evaluation frame of a record: the middle one."""
    frames = record["frames"].split("\n")
    return frames[len(frames) // 2]


def librosa_pil_sample(record, config, image_size):
    """One clip the way a user without keras-olm preprocesses it.

    Args:
        record: a record of the reader (`"audio"`, `"frames"`, `"label"`).
        config: the `SpectrogramConfig` ("cremad").
        image_size: tuple `(height, width)`.

    Returns:
        A tuple `(spectrogram (freq, time, 1), frame (h, w, 3), label)`.
    """
    spec = librosa_spectrogram(librosa_wave(record["audio"], config), config)
    frame = pil_frame(middle_frame(record), image_size)
    return spec[..., None], frame, record["label"]


def librosa_pil_batches(records, config, image_size, batch_size):
    """Yields `({"audio", "visual"}, labels)` batches, one clip at a time."""
    for start in range(0, len(records), batch_size):
        samples = [
            librosa_pil_sample(r, config, image_size)
            for r in records[start : start + batch_size]
        ]
        audio, visual, labels = zip(*samples)
        yield (
            {"audio": np.stack(audio), "visual": np.stack(visual)},
            np.asarray(labels),
        )


def tf_data_batches(reader, batch_size):
    """The reader's evaluation pipeline; each call is one pass of it.

    The dataset is built (and its functions traced) once, as a training
    loop does; each pass iterates it anew.
    """
    ds = reader.as_dataset(
        "train", batch_size=batch_size, shuffle=False, training=False
    )
    return ds.as_numpy_iterator


def timed_pass(make_batches):
    """Seconds and samples of one full pass, and the batches' outputs."""
    start = time.perf_counter()
    batches = list(make_batches())
    seconds = time.perf_counter() - start
    samples = sum(len(y) for _, y in batches)
    return seconds, samples, batches


def compare_outputs(a, b, config, file_rate):
    """Absolute differences of the two loaders' outputs.

    Returns a dict: `"audio"`: max abs difference over the frequency bins
    below 90% of the files' Nyquist frequency (where the clips have
    content) and over all bins; `"visual"`: max and mean abs difference;
    `"labels_equal"`: bool.
    """
    out = {}
    x, y = (
        np.concatenate([inputs["audio"] for inputs, _ in c]) for c in (a, b)
    )
    freqs = np.arange(x.shape[1]) * config.sample_rate / config.n_fft
    band = freqs < 0.45 * min(file_rate, config.sample_rate)
    diff = np.abs(x - y)
    out["audio"] = (float(diff[:, band].max()), float(diff.max()))
    x, y = (
        np.concatenate([inputs["visual"] for inputs, _ in c]) for c in (a, b)
    )
    diff = np.abs(x - y)
    out["visual"] = (float(diff.max()), float(diff.mean()))
    labels_a, labels_b = (np.concatenate([y for _, y in c]) for c in (a, b))
    out["labels_equal"] = bool(np.array_equal(labels_a, labels_b))
    out["band_hz"] = float(freqs[band].max())
    return out


# --- where the time goes: one thread, stage by stage -----------------------


def _single_thread(ds):
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return ds.with_options(options)


def _cpu_per_sample(run, samples, repeats=3):
    """Least CPU seconds per sample of `run()` over `repeats` calls."""
    run()  # warm-up: tracing, page cache
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / samples


def _drain(ds):
    return lambda: [None for _ in ds]


def stage_costs(reader, records, config, image_size, batch_size):
    """CPU milliseconds per sample of each stage, on one thread.

    Both loaders, stage by stage, each stage timed alone (tf.data: a
    one-thread pipeline of just that stage; per-sample: the same calls in
    a loop). Returns a list of `(stage, tf.data ms, per-sample ms)`.
    """
    from keras_olm.data import audio as audio_lib
    from keras_olm.data import image as image_lib

    n = len(records)
    paths = tf.data.Dataset.from_tensor_slices([r["audio"] for r in records])
    middle = [middle_frame(r) for r in records]
    frames = tf.data.Dataset.from_tensor_slices(middle)
    clips = paths.map(lambda p: audio_lib.load_clip(p, config))
    waves = _single_thread(clips).cache()
    _drain(waves)()  # fill the cache
    batched = waves.batch(batch_size)
    spectrograms = batched.map(lambda w: audio_lib.spectrogram(w, config))
    images = frames.map(
        lambda p: image_lib.load_image(p, image_size, reader.normalize)
    )
    tf_ms = {
        "audio: read, decode, resample, tile": _cpu_per_sample(
            _drain(_single_thread(clips)), n
        ),
        "audio: STFT, log (batched in tf.data)": _cpu_per_sample(
            _drain(_single_thread(spectrograms)), n
        )
        - _cpu_per_sample(_drain(_single_thread(batched)), n),
        "frame: read, decode, resize, normalise": _cpu_per_sample(
            _drain(_single_thread(images)), n
        ),
    }
    full = _single_thread(
        reader.as_dataset(
            "train", batch_size=batch_size, shuffle=False, training=False
        )
    )
    tf_ms["whole loader, as the throughput pass runs it"] = _cpu_per_sample(
        lambda: list(full.as_numpy_iterator()), n
    )

    waves_np = {}

    def load_all():
        for r in records:
            waves_np[r["audio"]] = librosa_wave(r["audio"], config)

    def stft_all():
        for wave in waves_np.values():
            librosa_spectrogram(wave, config)

    def frames_all():
        for path in middle:
            pil_frame(path, image_size)

    ref_ms = {
        "audio: read, decode, resample, tile": _cpu_per_sample(load_all, n),
        "audio: STFT, log (batched in tf.data)": _cpu_per_sample(stft_all, n),
        "frame: read, decode, resize, normalise": _cpu_per_sample(
            frames_all, n
        ),
        "whole loader, as the throughput pass runs it": _cpu_per_sample(
            lambda: list(
                librosa_pil_batches(records, config, image_size, batch_size)
            ),
            n,
        ),
    }
    return [(k, 1000 * tf_ms[k], 1000 * ref_ms[k]) for k in tf_ms]


# --- the pipeline's CPU per epoch, without and with the cache --------------


def pipeline_cpu_per_epoch(root, args, passes=3):
    """CPU milliseconds per sample of each pass over the training split.

    The reader's training pipeline as `fit` gets it (shuffled, random
    frames, batched, the batched STFT), and the same split in evaluation
    mode (fixed frames, not shuffled: as a held-out or validation split is
    read), on one thread (see
    `_single_thread`), timed with `time.process_time`: CPU time, which
    other jobs on the machine change far less than wall time. Without and
    with `cache="memory"`, alternated `args.pairs` times; a new reader and
    dataset each time, so pass 1 of the cached one fills its cache.

    Returns:
        A dict from condition to a list (over the pairs) of per-pass ms.
    """
    conditions = [
        (f"{mode}, {name}", cache, mode == "training")
        for mode in ("training", "evaluation")
        for name, cache in (("no cache", None), ("cache", "memory"))
    ]
    out = {name: [] for name, _, _ in conditions}
    for _ in range(args.pairs):
        for name, cache, training in conditions:
            reader = olm_data.CremaD(
                root, held_out_fraction=0.1, seed=0, cache=cache
            )
            n = len(reader.samples("train"))
            ds = _single_thread(
                reader.as_dataset(
                    "train",
                    batch_size=args.batch_size,
                    seed=0,
                    training=training,
                    shuffle=training,
                )
            )
            times = []
            for _ in range(passes):
                start = time.process_time()
                for _ in ds:
                    pass
                times.append(1000 * (time.process_time() - start) / n)
            out[name].append(times)
    return out


def format_cpu_table(out):
    runs = {k: np.asarray(v) for k, v in out.items()}
    passes = next(iter(runs.values())).shape[1]
    lines = [
        "| pipeline, one thread, ms CPU / sample (each pair) | "
        + " | ".join(f"pass {p + 1}" for p in range(passes))
        + " |",
        "|---" * (passes + 1) + "|",
    ]
    for name, r in runs.items():
        cells = [
            f"{np.median(r[:, p]):.2f} ("
            + ", ".join(f"{x:.2f}" for x in r[:, p])
            + ")"
            for p in range(passes)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- input wait during fit -----------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch, and the time between steps.

    `gaps[e]`: the seconds of epoch `e` spent outside the steps (from the
    epoch's start to its first step, and from each step's end to the next
    one's start). On JAX and torch the trainers fetch each batch there, so
    it is the input wait (plus the callbacks' own few microseconds); on
    TensorFlow the fetch runs inside the step and this is about 0.
    """

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.gaps = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = time.perf_counter()
        self.gap = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.gap += time.perf_counter() - self.last

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.gaps.append(self.gap)


def fit_epoch_seconds(train, held_out, epochs, args, weights=None):
    """Wall seconds of every epoch of a fit; also the initial weights."""
    keras.utils.set_random_seed(0)
    data = {
        "input_shapes": {
            m: tuple(s.shape[1:]) for m, s in train.element_spec[0].items()
        },
        "class_names": list(LABELS),
    }
    model_args = argparse.Namespace(
        width=args.width,
        stages=4,
        dropout=0.5,
        learning_rate=1e-3,
        weight_decay=0.05,
    )
    model = cremad.build_model(data, model_args, "olm")
    if weights is None:
        weights = model.get_weights()
    else:
        model.set_weights(weights)
    timer = EpochTimer()
    model.fit(
        train,
        held_out_data=held_out,
        epochs=epochs,
        callbacks=[timer],
        verbose=0,
    )
    return timer, weights


def _fit_datasets(reader, args):
    train = reader.as_dataset(
        "train", batch_size=args.batch_size, drop_remainder=True, seed=0
    )
    held_out = reader.as_dataset("held_out", batch_size=args.batch_size)
    return train, held_out


def input_wait(root, args):
    """Per-epoch step times fed by the pipeline without and with the
    reader's cache, and fed from memory; the wait shares.

    Fits, all from the same initial weights: one fed from memory (the
    uncached pipeline's output kept by `.cache()`, filled in an untimed
    epoch: its median step over epochs 2.. is the step with no input
    cost), then `args.pairs` alternated pairs of fits fed by a reader
    without cache and by a reader with `cache="memory"` (each a new
    reader and dataset, so each cached fit fills its cache in its epoch 1).

    Returns:
        A dict: `"memory"` (s/step), `"steps"`, and per condition
        (`"no cache"`, `"cache"`) a list over the pairs of the per-epoch
        seconds per step.
    """
    plain = olm_data.CremaD(root, held_out_fraction=0.1, seed=0)
    n = len(plain.samples("train"))
    steps = n // args.batch_size
    epochs = args.fit_epochs
    train, held_out = _fit_datasets(plain, args)
    timer, weights = fit_epoch_seconds(
        train.cache(), held_out.cache(), epochs + 1, args
    )
    seconds = timer.seconds
    memory = float(np.median(seconds[2:] if epochs > 1 else seconds[1:]))
    out = {"memory": memory / steps, "steps": steps}
    for name in ("no cache", "cache"):
        out[name] = []
        out[name + " gaps"] = []
    for _ in range(args.pairs):
        for name, cache in (("no cache", None), ("cache", "memory")):
            reader = olm_data.CremaD(
                root, held_out_fraction=0.1, seed=0, cache=cache
            )
            train, held_out = _fit_datasets(reader, args)
            timer, _ = fit_epoch_seconds(train, held_out, epochs, args, weights)
            out[name].append([s / steps for s in timer.seconds])
            out[name + " gaps"].append(
                [g / s for g, s in zip(timer.gaps, timer.seconds)]
            )
    return out


def format_wait_table(out, args):
    """The markdown table of `input_wait`: one row per condition and epoch
    (medians over the pairs), samples/s and the input wait."""
    bs, memory = args.batch_size, out["memory"]
    lines = [
        f"| fit ({out['steps']} steps of {bs}, OLM, CNN width "
        f"{args.width}), epoch | s/step (each pair) | samples/s "
        "| input wait, against memory | input wait, between steps "
        "(each pair) |",
        "|---|---|---|---|---|",
        f"| fed from memory (`.cache()` of the output), epochs 2.. "
        f"| {memory:.3f} | {bs / memory:.1f} | - | - |",
    ]
    for name in ("no cache", "cache"):
        runs = np.asarray(out[name])  # (pairs, epochs)
        gaps = np.asarray(out[name + " gaps"])
        for epoch in range(runs.shape[1]):
            step = float(np.median(runs[:, epoch]))
            each = ", ".join(f"{x:.3f}" for x in runs[:, epoch])
            gap = ", ".join(f"{100 * x:.1f}%" for x in gaps[:, epoch])
            wait = (step - memory) / step
            note = " (tracing; filling the cache)" if epoch == 0 else ""
            if name == "no cache" and epoch == 0:
                note = " (tracing)"
            lines.append(
                f"| reader, {name}, epoch {epoch + 1}{note} | {each} "
                f"| {bs / step:.1f} | {100 * wait:.1f}% | {gap} |"
            )
    return "\n".join(lines)


# --- main --------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clips", type=int, default=320, help="files")
    parser.add_argument(
        "--file-rate", type=int, default=16000, help="WAV sample rate"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes")
    parser.add_argument(
        "--fit-epochs", type=int, default=3, help="timed epochs per fit"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="alternated (no cache, cache) pairs of fits",
    )
    parser.add_argument(
        "--skip-throughput",
        action="store_true",
        help="only the fits (no loader comparison, no stage costs)",
    )
    parser.add_argument("--width", type=int, default=16, help="CNN width")
    parser.add_argument(
        "--data-dir", help="reuse (or create) the generated files here"
    )
    parser.add_argument("--skip-fit", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    root = args.data_dir or os.path.join(
        tempfile.gettempdir(),
        f"keras_olm_input_pipeline_{args.clips}_{args.file_rate}",
    )
    if not os.path.isfile(os.path.join(root, "test.csv")):
        write_dataset(root, args.clips, args.file_rate)
    if args.skip_throughput:
        print(f"load average {os.getloadavg()[0]:.1f} before the fits")
        return None, run_fits(root, args)
    reader = olm_data.CremaD(root, held_out_fraction=0.1, seed=0)
    config = reader.audio_config
    records = reader.samples("train")
    bs = args.batch_size
    loaders = {
        "tf.data (keras_olm.data.CremaD)": tf_data_batches(reader, bs),
        "per-sample librosa + PIL": lambda: librosa_pil_batches(
            records, config, reader.image_size, bs
        ),
    }
    outputs, times = {}, {name: [] for name in loaders}
    for name, make in loaders.items():  # untimed warm-up pass
        _, samples, outputs[name] = timed_pass(make)
    for _ in range(args.repeats):
        for name, make in loaders.items():
            seconds, samples, _ = timed_pass(make)
            times[name].append(seconds)
    diff = compare_outputs(*outputs.values(), config, args.file_rate)
    rates = {name: samples / np.median(t) for name, t in times.items()}
    base = rates["per-sample librosa + PIL"]
    print(
        f"backend {keras.backend.backend()}, tensorflow {tf.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"{samples} clips of the CREMA-D preset "
        f"({config.output_shape[0]}x{config.output_shape[1]} spectrogram, "
        f"{reader.image_size[0]}x{reader.image_size[1]} frame from 480x360 "
        f"JPEG, WAV at {args.file_rate} Hz), batch {bs}, median of "
        f"{args.repeats} passes"
    )
    print(
        f"outputs: log-spectrogram max abs diff {diff['audio'][0]:.1e} up "
        f"to {diff['band_hz']:.0f} Hz ({diff['audio'][1]:.1e} over all "
        f"bins, float32 FFT rounding in the resampler's empty stopband); "
        f"frame max abs diff {diff['visual'][0]:.3f}, mean "
        f"{diff['visual'][1]:.4f} (normalised units); labels equal: "
        f"{diff['labels_equal']}"
    )
    print()
    print("| loader | samples/s | ratio |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")
    costs = stage_costs(reader, records, config, reader.image_size, bs)
    print()
    print(
        "| stage, one thread | tf.data ms CPU / sample "
        "| per-sample ms CPU / sample |"
    )
    print("|---|---|---|")
    for stage, tf_ms, ref_ms in costs:
        print(f"| {stage} | {tf_ms:.2f} | {ref_ms:.2f} |")
    tf_total, ref_total = costs[-1][1], costs[-1][2]
    cores = os.cpu_count()
    print(
        f"\nBound on {cores} cores: tf.data can run at most {cores} samples "
        f"at once, so its lead over the one-thread loop is at most "
        f"{cores} x {ref_total:.2f} / {tf_total:.2f} = "
        f"{cores * ref_total / tf_total:.2f}x."
    )
    return rates, run_fits(root, args)


def run_fits(root, args):
    print()
    print(format_cpu_table(pipeline_cpu_per_epoch(root, args)))
    if args.skip_fit:
        return None
    out = input_wait(root, args)
    print()
    print(
        f"backend {keras.backend.backend()}, tensorflow {tf.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        "after the fits"
    )
    print()
    print(format_wait_table(out, args))
    return out


if __name__ == "__main__":
    main()
