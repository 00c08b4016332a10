"""Step time of OLM relative to plain joint training, per backend.

Measures, in one run and on the same model and batches, the time of a
training step for plain joint training (`balancer=None`), the heads without
modulation, OLM's per-step update alone (no held-out batch in the timed
epoch), OLM with the periodic held-out schedule (the default, every 20
steps) and OLM with a held-out batch every step (the authors' schedule),
and prints each as a ratio to plain joint training. Run it once per
backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/olm_overhead.py
    done

Two models: `--model mlp` (the default; two 3-layer MLPs on 1,024-d
inputs, 31 classes, a 10-35 ms step: the worst case for a fixed per-step
cost) and `--model resnet18` (the main job's encoders: two keras-hub
ResNet18 on 64x64 RGB and depth, 19 classes).

How it is measured: every variant's model is built and compiled once.
Then the variants take turns, one `fit` call of two epochs of `--steps`
steps each, `--repeats` turns after an untimed first one (compilation),
the order of the variants rotated every turn. Only the second epoch of
each call is timed (the first can include tracing: TensorFlow traces the
step that reads held-out batches once per `fit` call, a one-off cost of
about a second not counted here); with 20 steps an epoch it holds
exactly one held-out batch of the periodic schedule. A step's time is
that epoch's time (between the epoch-begin and epoch-end callbacks)
divided by its steps. Each variant's epoch is divided by plain joint
training's epoch of the same turn, and the median of these paired ratios
is reported with its quartiles: the cores of a shared machine speed up
and slow down by ±5-10% from one second to the next, which the pairing
and the median absorb. The backends' kernels run on one thread
(`--threads 1`, the default; `--threads 0` keeps each backend's own
pool), which removes the scheduling noise of two thread pools on two
cores without changing what a step computes. Targets: <= 1.03 for the
periodic schedule, <= 1.40 for the per-step one.
"""

import argparse
import importlib.util
import os
import pathlib
import time

import keras
import numpy as np

import keras_olm


class EpochTimer(keras.callbacks.Callback):
    """Wall and CPU time of every epoch but the first of each `fit` call.

    The first epoch of a call can include tracing: on TensorFlow the step
    that reads held-out batches is traced once per `fit` call.
    """

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        wall = time.perf_counter() - self.start[0]
        cpu = time.process_time() - self.start[1]
        if epoch > 0:
            self.times.append((wall, cpu))


def limit_threads(threads):
    """Runs every backend's kernels on `threads` threads (0: its default).

    Must run before the backend runs its first operation.
    """
    if not threads:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "jax":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false"
            + f" intra_op_parallelism_threads={threads}"
        )
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)


def mlp_encoders(args):
    def encoder():
        return keras.Sequential(
            [
                keras.layers.Dense(args.width, activation="relu")
                for _ in range(args.depth)
            ]
        )

    return {"audio": encoder(), "visual": encoder()}


def resnet18_encoders(args):
    path = pathlib.Path(__file__).parents[1] / "examples" / "sunrgbd_depth.py"
    spec = importlib.util.spec_from_file_location("sunrgbd_depth", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    size = args.image_size
    return {
        "rgb": example.resnet18_encoder((size, size, 3), name="rgb"),
        "depth": example.resnet18_encoder((size, size, 1), name="depth"),
    }


def make_data(args, n, rng):
    if args.model == "mlp":
        x = {
            m: rng.normal(size=(n, args.input_dim)).astype("float32")
            for m in ("audio", "visual")
        }
    else:
        s = args.image_size
        x = {
            "rgb": rng.normal(size=(n, s, s, 3)).astype("float32"),
            "depth": rng.normal(size=(n, s, s, 1)).astype("float32"),
        }
    y = rng.integers(0, args.classes, size=n).astype("int32")
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("mlp", "resnet18"), default="mlp")
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="steps an epoch; a multiple of 10 puts the same number of "
        "held-out batches in every epoch",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--input-dim", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for the backend's kernels; 0 for its default",
    )
    args = parser.parse_args()
    limit_threads(args.threads)
    mlp = args.model == "mlp"
    args.batch_size = args.batch_size or (128 if mlp else 32)
    args.samples = args.steps * args.batch_size
    args.classes = args.classes or (31 if mlp else 19)

    rng = np.random.default_rng(0)
    x, y = make_data(args, args.samples, rng)
    dev = make_data(args, max(args.batch_size * 4, args.samples // 10), rng)
    variants = {
        "plain joint training": None,
        "heads, no modulation": "heads",
        "OLM update only (no held-out batch in the timed epoch)": "none",
        "OLM periodic (default, every 20)": "periodic",
        "OLM held-out batch every step": "step",
    }
    build = mlp_encoders if mlp else resnet18_encoders
    models, timers = {}, {}
    for name, kind in variants.items():
        keras.utils.set_random_seed(0)
        balancer = kind
        if kind in ("periodic", "step"):
            balancer = keras_olm.OLM(dev_schedule=kind)
        elif kind == "none":
            # Held-out batches only at the first step of each fit call.
            balancer = keras_olm.OLM(dev_every=10**9)
        model = keras_olm.BalancedMultimodalModel(
            build(args), num_classes=args.classes, balancer=balancer
        )
        model.compile(optimizer="adam")
        models[name], timers[name] = model, EpochTimer()
    steps = int(np.ceil(args.samples / args.batch_size))
    names = list(models)
    # Turn 0 compiles every variant and is not counted. Then the variants
    # take turns, the order rotated every turn so that no variant always
    # runs first (right after another model's epoch) or last.
    for turn in range(args.repeats + 1):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            models[name].fit(
                x,
                y,
                batch_size=args.batch_size,
                epochs=2,
                dev_data=dev,
                callbacks=[timers[name]],
                verbose=0,
            )
    times = {
        name: np.array(timer.times[1:]) / steps  # after the warm-up turn
        for name, timer in timers.items()
    }
    plain = times[names[0]]
    description = (
        f"2 x MLP {args.input_dim}->{args.width}x{args.depth}"
        if mlp
        else f"2 x ResNet18 on {args.image_size}x{args.image_size} RGB + D"
    )
    print(
        f"backend {keras.backend.backend()}; {description}, "
        f"{args.classes} classes, batch {args.batch_size}, {steps} steps "
        f"an epoch; {args.repeats} turns, order rotated; "
        f"threads {args.threads or 'default'}\n"
    )
    print(
        "| variant | wall ms / step (fastest) | wall ratio (fastest) "
        "| wall ratio (median of turns) [quartiles] "
        "| CPU ratio (median of turns) |"
    )
    print("|---|---|---|---|---|")
    for name, values in times.items():
        # Paired ratios: each turn's epoch against plain joint training's
        # epoch of the same turn, so slow spells of the machine cancel.
        paired = values / plain
        q1, median, q3 = np.percentile(paired[:, 0], [25, 50, 75])
        fastest = values[:, 0].min()
        print(
            f"| {name} | {1000 * fastest:.2f} "
            f"| {fastest / plain[:, 0].min():.3f} "
            f"| {median:.3f} [{q1:.3f}, {q3:.3f}] "
            f"| {np.median(paired[:, 1]):.3f} |"
        )


if __name__ == "__main__":
    main()
