"""Step time of OLM relative to plain joint training, per backend.

Measures, in one run and on the same model and batches, the time of a
training step for plain joint training (`balancer=None`), the heads without
modulation, OLM with the periodic held-out schedule (the default, a
held-out batch every 20 steps) and OLM with a held-out batch every step
(the authors' schedule), and prints each as a ratio to plain joint
training. Run it once per backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/olm_overhead.py
    done

Two models: `--model mlp` (the default; two 3-layer MLPs on 1,024-d
inputs, 31 classes, a 10-35 ms step: the worst case for a fixed per-step
cost) and `--model resnet18` (the main job's encoders: two keras-hub
ResNet18 on 64x64 RGB and depth, 19 classes).

How it is measured: every variant's model is built and compiled once.
Then the variants take turns, one `fit` call of one epoch of `--steps`
steps each (40: about a second), `--repeats` turns (40) after an
untimed first one (tracing), the order of the variants rotated every
turn. Short epochs and many turns keep each variant's epoch within a few
seconds of plain training's, which it is divided by: the machine's
speed drifts over tens of seconds by more than the effects measured
(two identical plain models timed with 100-step epochs: paired ratios
0.968-1.045 between the quartiles, TensorFlow). Every step is timed on its own,
from the batch-begin callback to the batch-end callback, after waiting
for its result (JAX dispatches asynchronously); the first step of each
epoch, which also waits for the input pipeline's first batch, is left
out. Two ratios per variant and turn, each divided by plain joint
training's figure of the same turn:

- the median step: the median step time, robust to the spells in which
  the cores of this shared machine run 10-30% slow. For the periodic
  schedule it is weighted by how often each kind of step comes: (k - 1)
  parts the median of the steps without a held-out batch, 1 part the
  median of the steps with one (k = 20). Those two are also reported
  alone: "OLM update only" (the per-step update, no held-out batch) and
  the held-out steps;
- the epoch: the sum of the step times, the plain mean cost.

The table gives the median of each over the turns, with its quartiles.
A second, identical plain model is timed like the others: its ratio to
the first is 1 but for the measurement's own noise.
The backends' kernels run on one thread (`--threads 1`, the default;
`--threads 0` keeps each backend's own pool), which removes the
scheduling noise of two thread pools on two cores without changing what
a step computes. Targets: <= 1.03 for the periodic schedule, <= 1.40 for
the per-step one.
"""

import argparse
import importlib.util
import os
import pathlib
import time

import keras
import numpy as np

import keras_olm


class StepTimer(keras.callbacks.Callback):
    """Wall time of every step of every epoch, one list per epoch.

    A step runs from its batch-begin callback to its batch-end callback,
    where its loss is read, which waits for the step to finish.
    """

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])
        self.epochs[-1].append(time.perf_counter() - self.start)


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


def build_encoders(args):
    """The encoders of `args.model`: `"mlp"` or `"resnet18"`."""
    if args.model == "mlp":
        return mlp_encoders(args)
    return resnet18_encoders(args)


def describe(args):
    """A one-line description of `args.model`'s encoders."""
    if args.model == "mlp":
        return f"2 x MLP {args.input_dim}->{args.width}x{args.depth}"
    return f"2 x ResNet18 on {args.image_size}x{args.image_size} RGB + D"


def add_model_arguments(parser):
    """The encoders' shape and the kernels' threads, shared by the
    benchmarks that build these models."""
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--input-dim", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for the backend's kernels; 0 for its default",
    )


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


def step_times(timer, steps, every):
    """Per-turn step times: `(median, held-out median, others' median,
    epoch sum)`, from each epoch's steps but its first."""
    rows = []
    for epoch in timer.epochs:
        times = np.array(epoch[1:steps])
        index = np.arange(1, 1 + len(times))
        if every:
            held = index % every == 0
            held_out = np.median(times[held])
            others = np.median(times[~held])
            median = ((every - 1) * others + held_out) / every
        else:
            held_out = others = median = np.median(times)
        rows.append((median, held_out, others, times.sum()))
    return np.array(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("mlp", "resnet18"), default="mlp")
    parser.add_argument(
        "--steps",
        type=int,
        default=40,
        help="steps an epoch; a multiple of 20 puts the same number of "
        "held-out batches in every epoch",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=40)
    add_model_arguments(parser)
    args = parser.parse_args()
    limit_threads(args.threads)
    mlp = args.model == "mlp"
    args.batch_size = args.batch_size or (128 if mlp else 32)
    args.samples = args.steps * args.batch_size
    args.classes = args.classes or (31 if mlp else 19)

    rng = np.random.default_rng(0)
    x, y = make_data(args, args.samples, rng)
    held_out = make_data(
        args, max(args.batch_size * 4, args.samples // 10), rng
    )
    every = keras_olm.OLM().held_out_every
    if args.steps <= every:
        # Step 0 of every epoch is left out (it waits for the pipeline),
        # so the periodic schedule needs a held-out step after it.
        parser.error(
            f"--steps must exceed the periodic schedule's {every} steps "
            f"(got {args.steps}): no held-out step would be timed."
        )
    variants = {
        "plain joint training": (None, 0),
        # The same work again: how far apart identical steps measure.
        "plain joint training, a second model": (None, 0),
        "heads, no modulation": ("heads", 0),
        f"OLM periodic (default, every {every})": ("periodic", every),
        "OLM held-out batch every step": ("step", 0),
    }
    models, timers = {}, {}
    for name, (kind, _) in variants.items():
        keras.utils.set_random_seed(0)
        balancer = kind
        if kind in ("periodic", "step"):
            balancer = keras_olm.OLM(
                held_out=keras_olm.balancers.HeldOutSchedule(kind)
            )
        model = keras_olm.BalancedMultimodalModel(
            build_encoders(args),
            num_classes=args.classes,
            balancer=balancer,
        )
        model.compile(optimizer="adam")
        models[name], timers[name] = model, StepTimer()
    names = list(models)
    # Turn 0 traces every variant and is not counted. Then the variants
    # take turns, the order rotated every turn so that no variant always
    # runs first (right after another model's epoch) or last.
    for turn in range(args.repeats + 1):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            models[name].fit(
                x,
                y,
                batch_size=args.batch_size,
                epochs=1,
                held_out_data=held_out,
                callbacks=[timers[name]],
                verbose=0,
            )
    steps = int(np.ceil(args.samples / args.batch_size))
    times = {
        name: step_times(timers[name], steps, variants[name][1])[1:]
        for name in names
    }
    plain = times[names[0]]
    print(
        f"backend {keras.backend.backend()}; {describe(args)}, "
        f"{args.classes} classes, batch {args.batch_size}, {steps} steps "
        f"an epoch; {args.repeats} turns, order rotated; "
        f"threads {args.threads or 'default'}\n"
    )
    print(
        "| variant | median step, ms | ratio of median steps "
        "[quartiles over turns] | ratio of epochs [quartiles] |"
    )
    print("|---|---|---|---|")

    def row(label, values, column, epoch_ratio=True):
        # Paired: each turn against plain joint training's same turn, so
        # slow spells of the machine cancel.
        paired = values[:, column] / plain[:, 0]
        q1, median, q3 = np.percentile(paired, [25, 50, 75])
        cells = [
            label,
            f"{1000 * np.median(values[:, column]):.2f}",
            f"{median:.3f} [{q1:.3f}, {q3:.3f}]",
        ]
        if epoch_ratio:
            paired = values[:, 3] / plain[:, 3]
            q1, median, q3 = np.percentile(paired, [25, 50, 75])
            cells.append(f"{median:.3f} [{q1:.3f}, {q3:.3f}]")
        else:
            cells.append("")
        print("| " + " | ".join(cells) + " |")

    for name in names:
        values = times[name]
        if variants[name][1]:
            row(
                "OLM update only (steps without a held-out batch)",
                values,
                2,
                False,
            )
            row("OLM steps with a held-out batch", values, 1, False)
        row(name, values, 0)


if __name__ == "__main__":
    main()
