"""PyTorch steps: gradients from `loss.backward()`."""

import keras
import torch

from keras_olm.trainers.base import StepBase


class StepMixin(StepBase):
    def _held_out_batches(self, dev):
        """Torch tensors: `torch.compile` (`jit_compile=True`) cannot trace
        numpy arrays that wrap TensorFlow buffers, which tf.data's numpy
        iterator yields."""
        for batch in super()._held_out_batches(dev):
            yield keras.tree.map_structure(keras.ops.convert_to_tensor, batch)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        def train_function(data):
            feed = self._dev_feed
            if feed is None:
                return step(data)
            return step([feed.merge(batch) for batch in data])

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        x, y, sample_weight, dev = self._unpack(data)
        with torch.no_grad():
            dev_out = self._dev_losses(dev)
        self.zero_grad()
        total, aux = self._loss_and_logits(x, y, sample_weight, True)
        total.backward()
        variables = self.trainable_variables
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            grads, finite, aux = self._transform_gradients(grads, total, y, aux)
            self._apply_if_finite(finite, grads, variables)
            return self._after_train_step(
                y, sample_weight, total, aux, dev_out, finite
            )

    def test_step(self, data):
        x, y, sample_weight, _ = self._unpack(data)
        with torch.no_grad():
            return self._test_logs(x, y, sample_weight)
