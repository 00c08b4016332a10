"""TensorFlow steps: gradients from a `tf.GradientTape`."""

import contextlib

import tensorflow as tf

from keras_olm import held_out as held_out_lib
from keras_olm.trainers.step import TrainingStep


class StepMixin(TrainingStep):
    _xla_update = None

    def _loss_and_gradients(self, batch):
        with tf.GradientTape() as tape:
            total, aux = self._compute_loss(batch, training=True)
        grads = tape.gradient(total, self.trainable_variables)
        return total, aux, grads

    def _state_scope(self):
        return contextlib.nullcontext()

    def _balancer_update(self, *measurements):
        """Runs the balancer update as one XLA cluster.

        The update is a few hundred tiny ops; the graph executor dispatches
        each one, XLA fuses them. The rest of the step is left to
        `jit_compile` as the user chose.
        """
        if self.jit_compile:
            return super()._balancer_update(*measurements)
        if self._xla_update is None:
            variables = []

            def values(*measurements):
                pairs = TrainingStep._balancer_update(self, *measurements)
                variables[:] = [v for v, _ in pairs]
                return [value for _, value in pairs]

            self._xla_update = (
                tf.function(values, jit_compile=True),
                variables,
            )
        update, variables = self._xla_update
        values = update(*measurements)
        return list(zip(variables, values))

    def _attach_held_out(self, fit_inputs, dataset, period):
        """Held-out batches from the host; zipped into the training
        pipeline with several steps per execution (one compiled call then
        runs several steps)."""
        if self.steps_per_execution == 1:
            return super()._attach_held_out(fit_inputs, dataset, period)
        from keras.src.trainers.data_adapters import get_data_adapter

        x, y, sample_weight, batch_size, shuffle, class_weight = fit_inputs
        arrays = not isinstance(x, tf.data.Dataset) and y is not None
        train = get_data_adapter(
            x,
            y,
            sample_weight,
            batch_size=batch_size or (32 if arrays else None),
            shuffle=shuffle,
            class_weight=class_weight,
        ).get_tf_dataset()
        return held_out_lib.FitInputs(
            held_out_lib.with_held_out_slots(
                train, dataset, period, self.training_state.steps.value
            ),
            shuffle=False,
        )

    def _held_out_batches(self, dataset):
        """TensorFlow tensors straight from tf.data, as Keras' step gets."""
        return iter(dataset)

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
        step_with_held_out = self._make_function(self.train_step)

        def train_function(iterator):
            feed = self._held_out_feed
            if feed is None or not feed.due():
                return step(iterator)
            return step_with_held_out([feed.add(next(iterator))])

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return self._train_step(data)

    def test_step(self, data):
        return self._test_step(data)
