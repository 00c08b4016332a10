"""What a user meets first: the first `fit` call's time and its memory.

Per backend and model, every run in a fresh process (tracing, compiling
and the optimizer's variables are made once per process), the variants:

- `plain`: a plain `keras.Model` concatenating the encoders' outputs into
  one softmax layer, compiled with Adam and sparse cross-entropy;
- `joint`: `BalancedMultimodalModel(..., balancer=None)`;
- `olm`: `BalancedMultimodalModel(...)` with its default balancer (OLM),
  which holds out `held_out_split` (0.1) of the training arrays;

each built from the same seed and fitted on the same arrays with
`fit(x, y, batch_size, epochs, validation_split=0.1)`. The models:

- `mlp`: two 2-layer MLPs (256 -> 256 x 2), 10 classes, 4,096 samples,
  batch 64, 2 epochs;
- `main`: the main job's model (two keras-hub ResNet18 on 64x64 RGB and
  64x64 depth, 19 classes), 320 samples, batch 32, 1 epoch.

A process times what a user meets first: making and compiling the
model and its first `fit` call, wall time. A plain
functional model builds its variables when it is made, a
`BalancedMultimodalModel` in its first `fit`; the figure holds both. It
records the memory too: the resident set before the model is made
(after the data are), its peak (`ru_maxrss`) after `fit`, and under
TensorFlow the CPU allocator's peak from the model's making to the end
of `fit` (`tf.config.experimental.get_memory_info`). The variants run in turns,
the order rotated every turn; each figure is the median over `--repeats`
turns, and the ratio is taken per turn against `plain`'s (then the median
and the range over turns). `plain (again)` is the same work as `plain` in
a second process of the same turn: its ratio shows the noise.

Every process pins itself to `--core` (one core) and runs the backend's
kernels on one thread, as the other benchmarks do; under torch that is
`torch.set_num_threads(1)`.

    python benchmarks/first_fit.py                         # all
    python benchmarks/first_fit.py --backends tensorflow --models mlp
    python benchmarks/first_fit.py --models main --repeats 2
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("plain", "plain (again)", "joint", "olm")
MODELS = {
    "mlp": dict(samples=4096, batch_size=64, classes=10, epochs=2),
    "main": dict(samples=320, batch_size=32, classes=19, epochs=1),
}


def resident_bytes():
    """The process's resident set now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def child(args):
    """One variant's first `fit` in this process; prints a JSON line."""
    sys.path.insert(0, str(HERE))
    import keras
    from olm_overhead import limit_threads
    from olm_overhead import mlp_encoders
    from olm_overhead import resnet18_encoders

    import keras_olm

    limit_threads(1)
    spec = MODELS[args.model]
    rng = np.random.default_rng(0)
    n = spec["samples"]
    if args.model == "mlp":
        shapes = {"audio": (256,), "visual": (256,)}
        encoders_args = argparse.Namespace(width=256, depth=2)

        def encoders():
            return mlp_encoders(encoders_args)

    else:
        shapes = {"rgb": (64, 64, 3), "depth": (64, 64, 1)}
        encoders_args = argparse.Namespace(image_size=64)

        def encoders():
            return resnet18_encoders(encoders_args)

    x = {
        m: rng.normal(size=(n, *shape)).astype("float32")
        for m, shape in shapes.items()
    }
    y = rng.integers(0, spec["classes"], size=n).astype("int32")
    allocator = None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("CPU:0")
        allocator = tf.config.experimental
    before = resident_bytes()
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    if args.variant.startswith("plain"):
        built = encoders()
        inputs = {
            m: keras.Input(shape, name=f"{m}_input")
            for m, shape in shapes.items()
        }
        features = [keras.layers.Flatten()(built[m](inputs[m])) for m in shapes]
        outputs = keras.layers.Dense(spec["classes"])(
            keras.layers.Concatenate()(features)
        )
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    else:
        model = keras_olm.BalancedMultimodalModel(
            encoders(),
            num_classes=spec["classes"],
            balancer=None if args.variant == "joint" else "olm",
        )
        model.compile(optimizer="adam")
    model.fit(
        x,
        y,
        batch_size=spec["batch_size"],
        epochs=spec["epochs"],
        validation_split=0.1,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = dict(
        seconds=seconds,
        resident_before=before,
        resident_peak=peak,
        allocator_peak=(
            allocator.get_memory_info("CPU:0")["peak"] if allocator else None
        ),
    )
    print("RESULT " + json.dumps(record), flush=True)


def run_child(backend, model, variant, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        "taskset",
        "-c",
        str(args.core),
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--variant",
        variant,
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{backend} {model} {variant} failed:\n{out.stdout}\n{out.stderr}"
    )


def table(backend, model, runs):
    """The rows of one backend and model: median over turns, and the
    per-turn ratio against `plain` (median [min, max])."""
    rows = []
    plain = runs["plain"]
    for variant in VARIANTS:
        records = runs[variant]

        def ratio(key, records=records):
            values = [
                r[key] / p[key]
                for r, p in zip(records, plain)
                if r[key] and p[key]
            ]
            if not values:
                return "-"
            return (
                f"{np.median(values):.2f} "
                f"[{min(values):.2f}, {max(values):.2f}]"
            )

        def median(key, scale, records=records):
            values = [r[key] for r in records if r[key] is not None]
            return f"{np.median(values) / scale:.2f}" if values else "-"

        growth = [r["resident_peak"] - r["resident_before"] for r in records]
        plain_growth = [
            p["resident_peak"] - p["resident_before"] for p in plain
        ]
        growth_ratio = [g / p for g, p in zip(growth, plain_growth)]
        rows.append(
            f"| {backend} | {model} | {variant} "
            f"| {median('seconds', 1)} | {ratio('seconds')} "
            f"| {median('resident_peak', 2**30)} | {ratio('resident_peak')} "
            f"| {np.median(growth) / 2**20:.0f} "
            f"| {np.median(growth_ratio):.2f} "
            f"| {median('allocator_peak', 2**20)} "
            f"| {ratio('allocator_peak')} |"
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--backends", nargs="+", default=["tensorflow", "jax", "torch"]
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--model", choices=list(MODELS))
    parser.add_argument("--variant", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(
        "model and first fit: validation_split=0.1, "
        f"one core ({args.core}), one kernel thread; median over "
        f"{args.repeats} turns, ratios per turn against plain [min, max]\n"
    )
    print(
        "| backend | model | variant | model and first fit, s | ratio "
        "| peak resident, GiB | ratio | resident growth, MiB "
        "| ratio | TF allocator peak, MiB | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        for model in args.models:
            runs = {v: [] for v in VARIANTS}
            for turn in range(args.repeats):
                shift = turn % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    runs[variant].append(
                        run_child(backend, model, variant, args)
                    )
            for row in table(backend, model, runs):
                print(row, flush=True)


if __name__ == "__main__":
    main()
