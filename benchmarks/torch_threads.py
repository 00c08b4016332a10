"""torch's CPU threads beside tf.data, on a quiet and on a busy machine.

The work: `BalancedMultimodalModel` with its default balancer (OLM) on
two 2-layer MLPs (256 -> 256 x 2, 10 classes), fed a `tf.data.Dataset`
of 4,096 samples in batches of 64, one warm-up epoch and then `--epochs`
timed epochs (the figure). Each run is a fresh process on every core of
the machine, under the torch backend, with one of these settings:

- `keras-olm's choice`: nothing set; `fit` gives torch the cores no
  other runnable task uses (its thread count at most, at least 1);
- `OMP_NUM_THREADS=<cores>`: torch's own thread count, fixed (keras-olm
  leaves a count set there as it is);
- `OMP_NUM_THREADS=1`: one thread.

Conditions: `quiet` (nothing else running), and `busy`: `--busy`
processes spinning in pure Python for the whole run (another job on the
cores). The settings take turns, the order rotated every turn; each
figure is the median over `--repeats` turns, and the ratio is against the
best setting's median in the same condition.

    python benchmarks/torch_threads.py
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CORES = len(os.sched_getaffinity(0))
SETTINGS = {
    "keras-olm's choice": {},
    f"OMP_NUM_THREADS={CORES}": {"OMP_NUM_THREADS": str(CORES)},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def child(epochs):
    import keras
    import tensorflow as tf
    import torch

    import keras_olm

    rng = np.random.default_rng(0)
    n = 4096
    x = {
        m: rng.normal(size=(n, 256)).astype("float32")
        for m in ("audio", "visual")
    }
    y = rng.integers(0, 10, size=n).astype("int32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    held_out = tf.data.Dataset.from_tensor_slices(
        ({m: v[:512] for m, v in x.items()}, y[:512])
    ).batch(64)

    def encoder():
        return keras.Sequential(
            [keras.layers.Dense(256, activation="relu") for _ in range(2)]
        )

    keras.utils.set_random_seed(0)
    model = keras_olm.BalancedMultimodalModel(
        {"audio": encoder(), "visual": encoder()}, num_classes=10
    )
    model.compile(optimizer="adam")
    threads = []

    class Threads(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            threads.append(torch.get_num_threads())

    model.fit(train, held_out_data=held_out, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(
        train,
        held_out_data=held_out,
        epochs=epochs,
        verbose=0,
        callbacks=[Threads()],
    )
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps(dict(seconds=seconds, threads=threads[0])))


def run(setting, epochs):
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("OMP_NUM_THREADS", None)
    env.update(SETTINGS[setting])
    command = [sys.executable, __file__, "--child", "--epochs", str(epochs)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{setting} failed:\n{out.stdout}\n{out.stderr}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.epochs)
        return
    names = list(SETTINGS)
    print(
        f"torch on {CORES} cores, tf.data input; {args.epochs} timed "
        f"epochs; median over {args.repeats} turns; busy: {args.busy} "
        "spinning processes\n"
    )
    print(
        "| condition | setting | torch threads in fit | fit, s "
        "| ratio to the best setting |"
    )
    print("|---|---|---|---|---|")
    for condition in ("quiet", "busy"):
        spinners = []
        if condition == "busy":
            spinners = [
                subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                )
                for _ in range(args.busy)
            ]
            time.sleep(2)
        try:
            results = {name: [] for name in names}
            for turn in range(args.repeats):
                shift = turn % len(names)
                for name in names[shift:] + names[:shift]:
                    results[name].append(run(name, args.epochs))
        finally:
            for p in spinners:
                p.kill()
        medians = {
            name: np.median([r["seconds"] for r in results[name]])
            for name in names
        }
        best = min(medians.values())
        for name in names:
            threads = sorted({r["threads"] for r in results[name]})
            print(
                f"| {condition} | {name} | {threads} "
                f"| {medians[name]:.1f} | {medians[name] / best:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
