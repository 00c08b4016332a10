"""What the per-batch input checks cost, against a training step.

Per input form, in one run: the median time to read one batch (batch
32, two modalities of 256 and 64 floats, 8 classes) without the checks
and with them, as `fit` checks training batches (`fit`: labels, sample
weights, batch sizes) and as `evaluate`, `validation_data` and held-out
data are checked (`evaluate`: the same plus finite inputs, one sum per
modality). The forms:

- `tf.data`: a `tf.data.Dataset` from arrays, iterated as Keras does
  (`plan.check_dataset` adds the checks to its pipeline);
- `PyDataset`: a `keras.utils.PyDataset` read by index
  (`batch_checks.checked` wraps it; the checks run in numpy).

Arrays are checked once, up front, and cost nothing per batch. The reads
take turns (`--turns`, after an untimed first turn), and the unchecked
read runs twice (`(again)`): the same work, so the two rows show the
noise. The last row is the median training step of the same model with
the default balancer on arrays, for scale.

    KERAS_BACKEND=tensorflow python benchmarks/batch_checks.py
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import keras_olm
from keras_olm import batch_checks


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.y) // self.batch_size

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {m: v[s] for m, v in self.x.items()}, self.y[s]


def _median_read(read, turns):
    times = []
    for turn in range(turns + 1):
        start = time.perf_counter()
        count = read()
        if turn:
            times.append((time.perf_counter() - start) / count)
    return float(np.median(times))


class _StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch:
            self.times.append(time.perf_counter() - self.start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 32 * args.batches
    x = {
        "fast": rng.normal(size=(n, 256)).astype("float32"),
        "slow": rng.normal(size=(n, 64)).astype("float32"),
    }
    y = rng.integers(0, 8, n)
    encoders = {
        m: keras.Sequential([keras.layers.Dense(64, activation="relu")])
        for m in x
    }
    model = keras_olm.BalancedMultimodalModel(encoders, num_classes=8)
    model.compile(optimizer="adam")
    model.build({m: (None, v.shape[1]) for m, v in x.items()})
    plan = model.input_plan

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    pyds = _Batches(x, y, 32)

    def read_dataset(data):
        def read():
            count = 0
            for _ in data:
                count += 1
            return count

        return read

    def read_pydataset(data):
        def read():
            # As Keras reads a PyDataset: `num_batches`, then by index.
            for i in range(data.num_batches):
                data[i]
            return data.num_batches

        return read

    readers = {
        ("tf.data", "unchecked"): read_dataset(ds),
        ("tf.data", "fit"): read_dataset(plan.check_dataset(ds, "fit")),
        ("tf.data", "evaluate"): read_dataset(
            plan.check_dataset(ds, "evaluate")
        ),
        ("tf.data", "unchecked (again)"): read_dataset(ds),
        ("PyDataset", "unchecked"): read_pydataset(pyds),
        ("PyDataset", "fit"): read_pydataset(
            batch_checks.checked(pyds, plan.batch_check("fit"))
        ),
        ("PyDataset", "evaluate"): read_pydataset(
            batch_checks.checked(pyds, plan.batch_check("evaluate"))
        ),
        ("PyDataset", "unchecked (again)"): read_pydataset(pyds),
    }
    times = {key: [] for key in readers}
    for _ in range(args.turns):
        for key, read in readers.items():
            times[key].append(_median_read(read, 1))

    steps = _StepTimes()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[steps])
    step = float(np.median(steps.times))

    backend = keras.backend.backend()
    print(f"\n### Per-batch input checks ({backend}; batch 32)\n")
    print("| input form | checks | µs per batch | − unchecked | of a step |")
    print("|---|---|---|---|---|")
    for (form, checks), values in times.items():
        median = float(np.median(values))
        base = float(np.median(times[(form, "unchecked")]))
        extra = median - base
        print(
            f"| {form} | {checks} | {1e6 * median:.0f} | "
            f"{1e6 * extra:+.0f} | {100 * extra / step:+.1f} % |"
        )
    print(
        f"| arrays | training step (default balancer) | {1e6 * step:.0f} | | |"
    )


if __name__ == "__main__":
    main()
