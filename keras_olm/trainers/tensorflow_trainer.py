"""TensorFlow steps: gradients from a `tf.GradientTape`."""

import tensorflow as tf

from keras_olm.models import inputs as inputs_lib
from keras_olm.trainers.base import StepBase


class StepMixin(StepBase):
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

    def _attach_dev_data(self, train, dev, every):
        """Held-out batches from the host; zipped in with several steps
        per execution (one compiled call then runs several steps)."""
        if self.steps_per_execution > 1:
            return inputs_lib.with_dev_slots(train, dev, every)
        return super()._attach_dev_data(train, dev, every)

    def _held_out_batches(self, dev):
        """TensorFlow tensors straight from tf.data, as Keras' step gets."""
        return iter(dev.repeat())

    def make_train_function(self, force=False):
        """Keras' step, plus a second one for batches with held-out data.

        The steps without a held-out batch run Keras' compiled step as it
        is (it reads the training iterator inside the graph). On the steps
        that read one, the training batch is taken from the iterator here
        and passed, with the held-out batch, to a second compiled step
        (Keras' step function accepts a list of batches as well as an
        iterator). Both are traced once per model, not once per `fit`.
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function
        step_with_dev = self._make_function(self.train_step)

        def train_function(iterator):
            feed = self._dev_feed
            if feed is None or not feed.due():
                return step(iterator)
            return step_with_dev([feed.add(next(iterator))])

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        x, y, sample_weight, dev = self._unpack(data)
        dev_out = self._dev_losses(dev)
        with tf.GradientTape() as tape:
            total, aux = self._loss_and_logits(x, y, sample_weight, True)
        variables = self.trainable_variables
        grads = tape.gradient(total, variables)
        grads, finite, aux = self._transform_gradients(grads, total, y, aux)
        self._apply_if_finite(finite, grads, variables)
        return self._after_train_step(
            y, sample_weight, total, aux, dev_out, finite
        )

    def test_step(self, data):
        x, y, sample_weight, _ = self._unpack(data)
        return self._test_logs(x, y, sample_weight)
