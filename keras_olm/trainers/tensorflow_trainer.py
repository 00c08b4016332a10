"""TensorFlow steps: gradients from a `tf.GradientTape`."""

import tensorflow as tf
from keras import ops

from keras_olm.models import inputs as inputs_lib


class _GraphDevFeed:
    """Reads a held-out batch inside the compiled step, every k-th step.

    The held-out iterator and the step counter are captured by the step's
    `tf.function`; the `IteratorGetNext` sits in the taken branch of a
    `tf.cond`, so the steps in between neither produce nor move a held-out
    batch (see `keras_olm.trainers.dev_feed` for the schedule).
    """

    def __init__(self, dev, every):
        self.every = int(every)
        self.count = tf.Variable(0, dtype="int64", trainable=False)
        self.batches = iter(dev.repeat())

    def losses(self, measure, num_heads):
        due = tf.equal(self.count % self.every, 0)
        self.count.assign_add(1)

        def read():
            batch = next(self.batches)
            return measure((batch[0], batch[1], tf.constant(1.0)))

        def skip():
            return ops.zeros((num_heads,)), ops.zeros(())

        return tf.cond(due, read, skip)


class StepMixin:
    _dev_feed = None

    _xla_update = None

    def _update_balancer(self, *measurements):
        """Runs the balancer update as one XLA cluster.

        The update is a few hundred tiny ops; the graph executor dispatches
        each one (about 2 ms a step measured here), XLA fuses them. The
        rest of the step is left to `jit_compile` as the user chose.
        """
        if self.jit_compile:
            self._balancer_update_fn(*measurements)
            return
        if self._xla_update is None:
            self._xla_update = tf.function(
                self._balancer_update_fn, jit_compile=True
            )
        self._xla_update(*measurements)

    def _sync_training_state(self):
        """Variables are always current on this backend."""

    def _attach_dev_data(self, train, dev, every):
        """Reads held-out batches in the step; zips them under XLA."""
        if self.jit_compile:
            # XLA cannot compile an iterator read inside the step.
            return inputs_lib.with_dev_slots(train, dev, every)
        self._dev_feed = _GraphDevFeed(dev, every)
        # The step function captures this fit's held-out iterator.
        self.train_function = None
        return train

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:
            if self._dev_feed is not None:
                # Later steps (`train_on_batch`, the next fit) must not read
                # this fit's held-out iterator.
                self._dev_feed = None
                self.train_function = None

    def train_step(self, data):
        x, y, sample_weight, dev = self._unpack(data)
        if dev is None and self._dev_feed is not None:
            dev_out = self._dev_feed.losses(
                self._dev_losses, len(self.head_names)
            )
        else:
            dev_out = self._dev_losses(dev)
        with tf.GradientTape() as tape:
            total, aux = self._loss_and_logits(x, y, sample_weight, True)
        variables = self.trainable_variables
        grads = tape.gradient(total, variables)
        grads = self._transform_gradients(grads, total, y, aux)
        self.optimizer.apply(grads, variables)
        return self._after_train_step(y, sample_weight, total, aux, dev_out)

    def test_step(self, data):
        x, y, sample_weight, _ = self._unpack(data)
        return self._test_logs(x, y, sample_weight)
