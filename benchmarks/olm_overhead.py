"""Step time of OLM relative to plain joint training, per backend.

Measures, in one run and on the same model and batches, the time of a
training step for plain joint training (`balancer=None`), the heads without
modulation, OLM with the periodic held-out schedule (the default) and OLM
with a held-out batch every step (the authors' schedule), and prints each
as a ratio to plain joint training. Run it once per backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/olm_overhead.py
    done

Two models: `--model mlp` (the default; two 3-layer MLPs on 1,024-d
inputs, 31 classes, a ~10 ms step: the worst case for a fixed per-step
cost) and `--model resnet18` (the main job's encoders: two keras-hub
ResNet18 on 64x64 RGB and depth, 19 classes).

How it is measured: every variant's model is built and compiled once and
trained for one warm-up call (compilation); then the variants take turns,
one `fit` call of two epochs each, `--repeats` times, so that a slow spell
of the machine hits them all alike. Only the second epoch of each call is
timed (the first can include tracing: TensorFlow traces the step that
reads held-out batches once per `fit` call, a one-off cost of about a
second not counted here). A step's time is that epoch's time (between the
epoch-begin and epoch-end callbacks, so `fit`'s own set-up is excluded)
divided by its steps; the fastest epoch of each variant is reported
(other jobs on the machine only ever add time), with wall and CPU time
(all threads of the process). Targets: <= 1.03 for the periodic
schedule, <= 1.40 for the per-step one.
"""

import argparse
import importlib.util
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
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--input-dim", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    mlp = args.model == "mlp"
    args.samples = args.samples or (8192 if mlp else 640)
    args.batch_size = args.batch_size or (128 if mlp else 32)
    args.classes = args.classes or (31 if mlp else 19)

    rng = np.random.default_rng(0)
    x, y = make_data(args, args.samples, rng)
    dev = make_data(args, max(args.batch_size * 4, args.samples // 10), rng)
    variants = {
        "plain joint training": None,
        "heads, no modulation": "heads",
        "OLM periodic (default, every 10)": "periodic",
        "OLM held-out batch every step": "step",
    }
    build = mlp_encoders if mlp else resnet18_encoders
    models, timers = {}, {}
    for name, kind in variants.items():
        keras.utils.set_random_seed(0)
        balancer = kind
        if kind in ("periodic", "step"):
            balancer = keras_olm.OLM(dev_schedule=kind)
        model = keras_olm.BalancedMultimodalModel(
            build(args), num_classes=args.classes, balancer=balancer
        )
        model.compile(optimizer="adam")
        models[name], timers[name] = model, EpochTimer()
    steps = int(np.ceil(args.samples / args.batch_size))
    # Epoch 0 of each variant compiles; then the variants take turns.
    for _ in range(args.repeats + 1):
        for name, model in models.items():
            model.fit(
                x,
                y,
                batch_size=args.batch_size,
                epochs=2,
                dev_data=dev,
                callbacks=[timers[name]],
                verbose=0,
            )
    times = {
        name: np.array(timer.times[1:]) / steps  # after the warm-up call
        for name, timer in timers.items()
    }
    base = times["plain joint training"].min(axis=0)
    description = (
        f"2 x MLP {args.input_dim}->{args.width}x{args.depth}"
        if mlp
        else f"2 x ResNet18 on {args.image_size}x{args.image_size} RGB + D"
    )
    print(
        f"backend {keras.backend.backend()}; {description}, "
        f"{args.classes} classes, batch {args.batch_size}, {steps} steps "
        f"an epoch; fastest of {args.repeats} interleaved epochs\n"
    )
    print(
        "| variant | wall ms / step | wall ratio | CPU ms / step | CPU ratio |"
    )
    print("|---|---|---|---|---|")
    for name, values in times.items():
        wall, cpu = values.min(axis=0)
        print(
            f"| {name} | {1000 * wall:.2f} | {wall / base[0]:.3f} "
            f"| {1000 * cpu:.2f} | {cpu / base[1]:.3f} |"
        )


if __name__ == "__main__":
    main()
