"""Held-out batches: the split, the schedule, the feed and the batch form.

Balancers that read held-out losses (OLM, G-Blend: `needs_held_out`) see
a held-out batch on every k-th training step, k being the balancer's
`held_out_period` (1 for the `"step"` schedule, `held_out_every` for
`"periodic"`): on the steps whose global step (counted over every `fit`
call, saved with the model) is a multiple of k. The held-out batches are
taken in order and cycle through the held-out set, so the global step
alone says which held-out batch a step reads: the same on every backend,
and the same after a resume as in an uninterrupted run
(`start_position`).

A held-out batch reaches the training step in one of two ways:

- measured before the step, where a compiled call runs one step on one
  device (TensorFlow and JAX with `steps_per_execution=1` and no
  distribution, the default): on a step that reads one, the backend's
  trainer measures every head's held-out loss on the host first, with a
  forward pass compiled on its own, and the step reads the losses
  (`HeldOutLosses`; TensorFlow stages them in a variable, JAX adds them,
  zeros with flag 0 on other steps, to every batch). The training step
  has the same inputs on every step and is traced once;
- measured inside the step otherwise: the `HeldOutFeed` adds the
  held-out batch to the training batch on the host (`HeldOutFeed.merge`),
  on the steps that read one and on no other. The training batch is a
  `(x, y[, sample_weight], HeldOutBatch)` tuple then. This serves several
  steps per compiled call (JAX's trainer takes each step's batch from
  the host iterator, which the feed wraps; TensorFlow's runs a compiled
  call in which no step is due as it is, and a call in which one is on a
  list of batches taken on the host, each merged), torch (one eager step
  per call), and distribution: the held-out batch is an ordinary input
  of the step. A `tf.distribute` strategy hands it to every replica
  whole, JAX's `keras.distribution` lays it out over the devices as a
  training batch (`_held_out_batches`), and each torch process reads its
  own; the step averages the held-out losses over the replicas or
  processes (`_global_batch`).

Either way the weights measured at are those the step starts from, and
`unpack` turns any batch into a `StepBatch`. Exact resume
(`BackupAndRestore`, `load_model` with `initial_epoch`) holds for both:
the feed finds its place from the global step when the first step asks
for it, after the callbacks' `on_train_begin`, where a model is
restored; nothing of the schedule lives in the input pipeline.
"""

from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_olm.inputs import LABEL

_GOLDEN = 2654435761  # Knuth's multiplicative hash constant.


class HeldOutBatch(NamedTuple):
    """A held-out batch, as a training step receives it.

    Args:
        x: dict from modality name to a batch.
        y: the batch's labels (or targets).
    """

    x: Any
    y: Any


class HeldOutLosses(NamedTuple):
    """Every head's held-out loss, measured before the training step.

    Args:
        losses: float32 `(num_heads,)`; zeros on a step that reads none.
        flag: float32 scalar: 1 when `losses` were measured for this
            step, 0 otherwise.
    """

    losses: Any
    flag: Any


class StepBatch(NamedTuple):
    """One training or test batch, unpacked.

    Args:
        x: dict from modality name to a batch.
        y: labels, or a dict of targets with regression heads.
        sample_weight: per-sample weights or `None`.
        held_out: a `HeldOutBatch`, `HeldOutLosses` or `None`.
    """

    x: Any
    y: Any
    sample_weight: Any = None
    held_out: Any = None


def pack(data, held_out):
    """The training batch `data` with `held_out` (a `HeldOutBatch` or
    `HeldOutLosses`)."""
    data = tuple(data)
    sample_weight = data[2] if len(data) > 2 else None
    return StepBatch(data[0], data[1], sample_weight, held_out)


def unpack(data):
    """Any batch a step receives, as a `StepBatch`."""
    if isinstance(data, StepBatch):
        return data
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple) or len(data) < 2:
        raise ValueError(
            "Training batches must be (inputs, labels[, sample_weight])."
        )
    held_out = None
    if isinstance(data[-1], (HeldOutBatch, HeldOutLosses)):
        held_out, data = data[-1], data[:-1]
    sample_weight = data[2] if len(data) > 2 else None
    return StepBatch(data[0], data[1], sample_weight, held_out)


class FitInputs(NamedTuple):
    """The training inputs `fit` hands to Keras' `fit`."""

    x: Any
    y: Any = None
    sample_weight: Any = None
    batch_size: Any = None
    shuffle: bool = True
    class_weight: Any = None


def num_batches(dataset):
    """The number of batches of a finite `dataset` (read once if tf.data
    does not know it); a clear error if there are none."""
    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "held_out_data must be finite; got an endlessly repeating dataset."
        )
    if n < 0:
        n = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    if n == 0:
        raise ValueError("held_out_data is empty: it has no batches.")
    return n


def start_position(global_step, period, num_held_out_batches):
    """Where a `fit` that starts at `global_step` stands in the schedule.

    Returns:
        `(count, skip)`: the step count the feed starts from, and how many
        held-out batches of a pass were read already (batches are read on
        steps 0, k, 2k, ...: `ceil(global_step / k)` of them).
    """
    read = -(-int(global_step) // int(period))
    return int(global_step), read % int(num_held_out_batches)


def rotated(dataset, skip):
    """`dataset` starting at batch `skip` and wrapping round, endlessly.

    tf.data's autotuning is off in this pipeline: a held-out batch is read
    every few steps, and deleting an endless iterator whose autotuning
    thread is running can wait seconds for that thread (at the end of every
    `fit`).
    """
    if skip:
        dataset = dataset.skip(skip).concatenate(dataset.take(skip))
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.repeat().with_options(options)


class HeldOutFeed:
    """Adds a held-out batch to every k-th training batch, on the host.

    The feed finds its place when the first step asks for it (after the
    callbacks' `on_train_begin`, where `BackupAndRestore` restores a
    model): the global step then says which step is due and which held-out
    batch comes next (`start_position`). It counts the steps it is asked
    about (`due`, `merge`); `sync` sets the count to the global step where
    the steps a call ran are not known on the host.

    Args:
        make_batches: a callable that takes the number of held-out batches
            to skip and returns an endless iterator of held-out `(inputs,
            labels[, ...])` batches from there on, in the form the
            backend's step takes its inputs.
        period: int. A held-out batch on global steps 0, k, 2k, ...
        global_step: a callable that returns the global step.
        num_held_out_batches: int. Batches in one pass of the held-out set.

    Example:
    ```python
    feed = HeldOutFeed(make_batches, 3, lambda: 0, num_batches(held_out))
    batches = [feed.merge(batch) for batch in train]  # steps 0, 3, ...
    ```
    """

    def __init__(self, make_batches, period, global_step, num_held_out_batches):
        self.period = int(period)
        self.make_batches = make_batches
        self.global_step = global_step
        self.num_held_out_batches = int(num_held_out_batches)
        self.count = None
        self.batches = None

    def _start(self):
        self.count, skip = start_position(
            self.global_step(), self.period, self.num_held_out_batches
        )
        self.batches = self.make_batches(skip)

    def sync(self):
        """Sets the step count to the global step (starting the feed if
        it has not started)."""
        if self.batches is None:
            self._start()
        else:
            self.count = int(self.global_step())

    def due_within(self, steps):
        """Whether any of the next `steps` steps reads held-out data;
        counts nothing."""
        if self.count is None:
            self._start()
        return -self.count % self.period < steps

    def due(self):
        """Counts one step; whether it is a step that reads held-out data."""
        if self.count is None:
            self._start()
        due = self.count % self.period == 0
        self.count += 1
        return due

    def add(self, data):
        """The training batch `data` with the next held-out batch added."""
        return pack(data, self.next_batch())

    def merge(self, data):
        """Counts one step; the batch, with a held-out batch if due."""
        return self.add(data) if self.due() else data

    def wrap(self, iterator):
        """An iterator of the training batches with held-out batches."""
        for data in iterator:
            yield self.merge(data)

    def next_batch(self):
        """The next held-out batch, as a `HeldOutBatch`; counts nothing."""
        if self.batches is None:
            self._start()
        held_out = next(self.batches)
        return HeldOutBatch(held_out[0], held_out[1])

    def wrap_measured(self, iterator, measure, num_heads):
        """An iterator of the training batches, each with `HeldOutLosses`:
        `measure(held_out_batch)` on a step that reads held-out data,
        zeros with flag 0 on the others.

        Every batch has the same structure, so a compiled step is traced
        once. `measure` runs when the batch is taken, so the iterator
        suits a step function that takes one batch per call (the weights
        it measures at are those the step starts from).
        """
        nothing = HeldOutLosses(
            np.zeros((num_heads,), "float32"), np.zeros((), "float32")
        )
        for data in iterator:
            held_out = nothing
            if self.due():
                held_out = HeldOutLosses(
                    measure(self.next_batch()), np.ones((), "float32")
                )
            yield pack(data, held_out)


def _num_samples(y):
    return len(y[LABEL]) if isinstance(y, dict) else len(y)


def _take_targets(y, idx):
    if isinstance(y, dict):
        return {k: np.asarray(v)[idx] for k, v in y.items()}
    return np.asarray(y)[idx]


def split_arrays(x, y, sample_weight, fraction, seed):
    """Splits arrays into (train, held-out) by a seeded permutation."""
    n = _num_samples(y)
    n_held_out = int(round(n * fraction))
    if not 0 < n_held_out < n:
        raise ValueError(
            f"held_out_split={fraction} leaves {n_held_out} of {n} samples for "
            "the held-out losses; pick a fraction that holds out at least "
            "one sample and keeps at least one for training."
        )
    order = np.random.default_rng(seed).permutation(n)
    held_out_idx = np.sort(order[:n_held_out])
    train_idx = np.sort(order[n_held_out:])

    def take(idx):
        xs = {m: np.asarray(v)[idx] for m, v in x.items()}
        sw = None if sample_weight is None else np.asarray(sample_weight)[idx]
        return xs, _take_targets(y, idx), sw

    return take(train_idx), take(held_out_idx)


def split_held_out(data, fraction=0.1, seed=0):
    """Splits training data into (train, held-out) parts.

    For arrays, `data` is an `(inputs, labels[, sample_weight])` tuple and
    the held-out part a seeded random `fraction` of the samples (as `fit`
    holds out with `held_out_split`). For an unbatched dataset, element i
    goes to the held-out part when a multiplicative hash of `(i, seed)`
    falls below `fraction`: the split is deterministic and the same on
    every pass, so it must be taken BEFORE any shuffling (a reshuffled
    stream would move samples between the parts). OLM reads its held-out
    losses from the second part; never use the test set for it. To compare
    OLM with other training fairly, train every method on the first part.

    Args:
        data: an `(inputs, labels[, sample_weight])` tuple of arrays, or an
            unbatched `tf.data.Dataset` in a fixed order.
        fraction: float in (0, 1). Share of samples held out. Defaults to
            `0.1`.
        seed: int. Changes which samples are held out. Defaults to `0`.

    Returns:
        `(train, held_out)`: two tuples like `data`, or two
        `tf.data.Dataset`s.

    Example:
    ```python
    (x, y), held_out = keras_olm.split_held_out((x, y), 0.1)
    model.fit(x, y, held_out_data=held_out)  # OLM
    baseline.fit(x, y)  # the same training samples

    ds = tf.data.Dataset.from_tensor_slices(({"a": xa, "v": xv}, y))
    train, held_out = keras_olm.split_held_out(ds, 0.1)
    model.fit(train.shuffle(1000).batch(64), held_out_data=held_out.batch(64))
    ```
    """
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        sample_weight = data[2] if len(data) == 3 else None
        train, held_out = split_arrays(
            data[0], data[1], sample_weight, fraction, seed
        )
        size = len(data)
        return train[:size], held_out[:size]
    if not isinstance(data, tf.data.Dataset):
        raise TypeError(
            "split_held_out takes an (inputs, labels) tuple of arrays or an "
            f"unbatched tf.data.Dataset; got {type(data).__name__}."
        )
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    threshold = tf.constant(int(fraction * 2**32), tf.uint64)
    salt = tf.constant((seed * 0x9E3779B9) % 2**32, tf.uint64)

    def is_held_out(i):
        h = (tf.cast(i, tf.uint64) * _GOLDEN + salt) % (2**32)
        return h < threshold

    indexed = data.enumerate()
    held_out = indexed.filter(lambda i, *e: is_held_out(i))
    train = indexed.filter(lambda i, *e: tf.logical_not(is_held_out(i)))

    def drop_index(i, *e):
        return e[0] if len(e) == 1 else e

    return train.map(drop_index), held_out.map(drop_index)
