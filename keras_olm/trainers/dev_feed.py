"""Held-out batches for balancers that measure held-out losses (OLM).

A balancer with `needs_dev_data` sees a held-out batch on every k-th
training step (k = 1 for OLM's `"step"` schedule, `dev_every` for
`"periodic"`), counted from the start of each `fit` call; the held-out
batches are taken in order and cycle through the held-out set, across
epochs. The same steps see the same held-out batches on every backend.

The held-out batches do not travel in the training input pipeline: a
zipped stream (`inputs.with_dev_slots`, kept for TensorFlow with
`steps_per_execution > 1`, where its schedule restarts with each epoch)
cost 0.6-0.8 ms of CPU per step in tf.data (measured by iterating the
pipelines alone), about 5% of a 12 ms step, even on the steps that carry
no held-out batch. Instead `HostDevFeed` adds the held-out batch on the
host, and only on the steps that need one; the other steps run the plain
compiled step, which has no held-out pass in it at all.

TensorFlow used to read the held-out iterator inside its compiled step
(a `tf.cond` around `IteratorGetNext`). Capturing the iterator made the
step retrace at every `fit` call (about 1.6 s) and kept five threads of
every call's iterator alive for the life of the process.
"""


class HostDevFeed:
    """Adds a held-out batch to every k-th training batch, on the host.

    Args:
        batches: an endless iterator of held-out `(inputs, labels[, ...])`
            batches, in the form the backend's step takes its inputs
            (`HostFeedMixin._held_out_batches`).
        every: int. A held-out batch on steps 0, k, 2k, ... of the fit.
    """

    def __init__(self, batches, every):
        self.every = int(every)
        self.count = 0
        self.batches = batches

    def due(self):
        """Counts one step; whether it is a step that reads held-out data."""
        due = self.count % self.every == 0
        self.count += 1
        return due

    def add(self, data):
        """The training batch `data` with the next held-out batch added."""
        dev = next(self.batches)
        # No `dev_flag`: every batch that carries a held-out batch reads it.
        extras = {"dev_x": dev[0], "dev_y": dev[1]}
        data = tuple(data)
        if len(data) > 2 and data[2] is not None:
            extras["sample_weight"] = data[2]
        return (data[0], data[1], extras)

    def merge(self, data):
        """Counts one step; the batch, with a held-out batch if due."""
        return self.add(data) if self.due() else data

    def wrap(self, iterator):
        """An iterator of the training batches with held-out batches."""
        for data in iterator:
            yield self.merge(data)


class HostFeedMixin:
    """Trainer mixin: held-out batches merged into batches on the host.

    `fit` attaches a `HostDevFeed`; the backend's `make_train_function`
    merges its held-out batches into the training batches.
    """

    _dev_feed = None

    def _attach_dev_data(self, train, dev, every):
        """Feeds held-out batches from the host (see `HostDevFeed`)."""
        self._dev_feed = HostDevFeed(self._held_out_batches(dev), every)
        return train

    def _held_out_batches(self, dev):
        """The held-out batches, endlessly, as numpy arrays.

        Trainers override this to hand the step its held-out batches in
        the form Keras hands it the training batches (a conversion of
        every batch here cost about 1 ms per held-out batch on TensorFlow
        and JAX). Numpy is JAX's form: the jitted step moves the arrays
        itself.
        """
        return dev.repeat().as_numpy_iterator()

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._dev_feed = None
