"""JAX steps: pure functions of the state tuple, gradients by `jax.grad`.

Every variable value lives in the state tuple during an epoch, so each
shared piece of the step runs inside a `StatelessScope` that maps the
model's variables to their current values; what it assigns (batch-norm
statistics, the balancer's state, metrics) is read back from the scope
into the new state.
"""

import jax
import keras

from keras_olm.trainers.base import StepBase


class StepMixin(StepBase):
    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        def train_function(state, iterator):
            feed = self._dev_feed
            if feed is None:
                return step(state, iterator)
            return step(state, feed.wrap(iterator))

        self.train_function = train_function
        return train_function

    def _purge_model_variables(self, *args, **kwargs):
        """Keeps variable values attached during an epoch.

        Keras' JAX trainer detaches them to save one copy of the weights;
        then any error in the middle of an epoch (a bad batch, a NaN stop)
        would leave the model with no values at all. Keeping them costs one
        copy of the weights and leaves the model at its last synced state.
        """

    def _sync_training_state(self):
        """Writes the state of the last finished step into the variables."""
        self.jax_state_sync()

    def _run_stateless(self, fn, state_vars, values):
        """Runs `fn()` with variables mapped to values; returns new values."""
        mapping = []
        for ref_vars, vals in zip(state_vars, values):
            mapping.extend(zip(ref_vars, vals))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = fn()
        new_values = []
        for ref_vars, vals in zip(state_vars, values):
            updated = []
            for ref_v, v in zip(ref_vars, vals):
                new_v = scope.get_current_value(ref_v)
                updated.append(v if new_v is None else new_v)
            new_values.append(updated)
        return out, new_values

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight, dev = self._unpack(data)
        refs = (
            self.trainable_variables,
            self.non_trainable_variables,
            self.metrics_variables,
        )

        def loss_fn(trainable):
            (total, aux), (_, new_nt, _) = self._run_stateless(
                lambda: self._loss_and_logits(x, y, sample_weight, True),
                refs,
                (trainable, non_trainable, metrics_vars),
            )
            return total, (aux, new_nt)

        dev_out, _ = self._run_stateless(
            lambda: self._dev_losses(dev),
            refs,
            (trainable, non_trainable, metrics_vars),
        )
        (total, (aux, non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(trainable)
        # Balancer state assigned here (e.g. a noise seed) is kept.
        (grads, finite, aux), (_, non_trainable, _) = self._run_stateless(
            lambda: self._transform_gradients(grads, total, y, aux),
            refs,
            (trainable, non_trainable, metrics_vars),
        )
        # A step with a non-finite loss moves no weight (see
        # `_apply_if_finite`).
        # Both branches give lists (the state may come as tuples).
        trainable, optimizer_vars = keras.ops.cond(
            finite,
            lambda: tuple(
                map(
                    list,
                    self.optimizer.stateless_apply(
                        optimizer_vars, grads, trainable
                    ),
                )
            ),
            lambda: (list(trainable), list(optimizer_vars)),
        )
        logs, (_, non_trainable, metrics_vars) = self._run_stateless(
            lambda: self._after_train_step(
                y, sample_weight, total, aux, dev_out, finite
            ),
            refs,
            (trainable, non_trainable, metrics_vars),
        )
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_vars = state
        x, y, sample_weight, _ = self._unpack(data)
        logs, (_, non_trainable, metrics_vars) = self._run_stateless(
            lambda: self._test_logs(x, y, sample_weight),
            (
                self.trainable_variables,
                self.non_trainable_variables,
                self.metrics_variables,
            ),
            (trainable, non_trainable, metrics_vars),
        )
        return logs, (trainable, non_trainable, metrics_vars)
