"""TensorFlow steps: gradients from a `tf.GradientTape`."""

import tensorflow as tf

from keras_olm.models import inputs as inputs_lib


class StepMixin:
    def _attach_dev_data(self, train, dev, every):
        """Zips the held-out slots into the input pipeline."""
        return inputs_lib.with_dev_slots(train, dev, every)

    def _sync_training_state(self):
        """Variables are always current on this backend."""

    def train_step(self, data):
        x, y, sample_weight, dev = self._unpack(data)
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
