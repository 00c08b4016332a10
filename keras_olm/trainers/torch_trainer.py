"""PyTorch steps: gradients from `loss.backward()`."""

import keras
import torch

from keras_olm.trainers.step import TrainingStep


class StepMixin(TrainingStep):
    def _loss_and_gradients(self, batch):
        self.zero_grad()
        total, aux = self._compute_loss(batch, training=True)
        total.backward()
        grads = [v.value.grad for v in self.trainable_variables]
        return total, aux, grads

    def _state_scope(self):
        return torch.no_grad()

    def _held_out_batches(self, dataset):
        """Torch tensors: `torch.compile` (`jit_compile=True`) cannot trace
        numpy arrays that wrap TensorFlow buffers, which tf.data's numpy
        iterator yields."""
        for batch in super()._held_out_batches(dataset):
            yield keras.tree.map_structure(keras.ops.convert_to_tensor, batch)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        def train_function(data):
            feed = self._held_out_feed
            if feed is not None:
                data = [feed.merge(batch) for batch in data]
            return step(data)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return self._train_step(data)

    def test_step(self, data):
        return self._test_step(data)
