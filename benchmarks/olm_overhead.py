"""Step time of OLM relative to plain joint training, per backend.

Measures, in one run and on the same model and batches, the mean time of a
training step for plain joint training (`balancer=None`), the heads without
modulation, OLM with the periodic held-out schedule (the default) and OLM
with a held-out batch every step (the authors' schedule), and prints each
as a ratio to plain joint training. Run it once per backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/olm_overhead.py
    done

Targets: <= 1.03 for the periodic schedule, <= 1.40 for the per-step one.
"""

import argparse
import time

import keras
import numpy as np

import keras_olm


def encoder(width, depth):
    return keras.Sequential(
        [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    )


def make_model(balancer, width, depth, num_classes):
    return keras_olm.BalancedMultimodalModel(
        {"audio": encoder(width, depth), "visual": encoder(width, depth)},
        num_classes=num_classes,
        balancer=balancer,
    )


class StepTimer(keras.callbacks.Callback):
    """Wall and CPU time of each epoch after the first (which compiles).

    CPU time (all threads of this process) is the steadier measure when
    other jobs share the cores; wall time is what a user waits.
    """

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        if epoch > 0:
            wall = time.perf_counter() - self.start[0]
            cpu = time.process_time() - self.start[1]
            self.times.append((wall, cpu))


def measure(balancer, x, y, dev, args):
    keras.utils.set_random_seed(0)
    model = make_model(balancer, args.width, args.depth, args.classes)
    model.compile(optimizer="adam")
    timer = StepTimer()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs + 1,
        dev_data=dev,
        callbacks=[timer],
        verbose=0,
    )
    steps = int(np.ceil(len(y) / args.batch_size))
    return np.array(timer.times) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--input-dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=31)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n, d = args.samples, args.input_dim
    x = {
        "audio": rng.normal(size=(n, d)).astype("float32"),
        "visual": rng.normal(size=(n, d)).astype("float32"),
    }
    y = rng.integers(0, args.classes, size=n).astype("int32")
    m = max(args.batch_size * 4, n // 10)
    dev = (
        {k: rng.normal(size=(m, d)).astype("float32") for k in x},
        rng.integers(0, args.classes, size=m).astype("int32"),
    )
    variants = {
        "plain joint training": lambda: None,
        "heads, no modulation": lambda: "heads",
        "OLM periodic (default, every 10)": lambda: keras_olm.OLM(),
        "OLM held-out batch every step": lambda: keras_olm.OLM(
            dev_schedule="step"
        ),
    }
    # Interleave the variants over repeats so drift hits them all alike.
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            times[name].extend(measure(make(), x, y, dev, args))
    # The fastest epoch of each variant: other jobs on the machine only
    # ever add time, so the minimum is the least disturbed estimate.
    base = np.min(times["plain joint training"], axis=0)
    print(
        f"backend {keras.backend.backend()}; {n} samples, batch "
        f"{args.batch_size}, 2 x MLP {d}->{args.width}x{args.depth}, "
        f"{args.classes} classes; fastest of {len(times[name])} epochs\n"
    )
    print(
        "| variant | wall ms / step | wall ratio | CPU ms / step | CPU ratio |"
    )
    print("|---|---|---|---|---|")
    for name, values in times.items():
        wall, cpu = np.min(values, axis=0)
        print(
            f"| {name} | {1000 * wall:.2f} | {wall / base[0]:.3f} "
            f"| {1000 * cpu:.2f} | {cpu / base[1]:.3f} |"
        )


if __name__ == "__main__":
    main()
