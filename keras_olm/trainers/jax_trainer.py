"""JAX steps: pure functions of the state tuple, gradients by `jax.grad`.

Every variable value lives in the state tuple during an epoch. A step
keeps the tuple's current values in `_carried` while it is traced; each
shared piece of the step runs in `_state_scope`, a `StatelessScope` that
maps the model's variables to those values, and what the piece assigns
(batch-norm statistics, the balancer's state, metrics) is read back from
the scope into `_carried`.
"""

import contextlib
import itertools

import jax
import keras

from keras_olm.trainers import resume
from keras_olm.trainers.step import TrainingStep


def _pass_over(iterator, count):
    """Takes `count` batches from `iterator`; whether there were as many."""
    for _ in range(count):
        if next(iterator, None) is None:
            return False
    return True


class _Carried:
    """The state values a JAX step threads through its pieces."""

    def __init__(self, trainable, non_trainable, optimizer, metrics):
        self.trainable = list(trainable)
        self.non_trainable = list(non_trainable)
        self.optimizer = list(optimizer)
        self.metrics = list(metrics)


class StepMixin(TrainingStep):
    _carried = None
    _measure_function = None

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        # With one step per call on one device, the held-out losses are
        # measured before the step (`_measured`) and every batch carries
        # them (`HeldOutFeed.wrap_measured`): the step compiles once.
        def train_function(state, iterator):
            steps = self.steps_per_execution
            passed = resume.batches_to_pass(self, steps)
            if passed:
                if not _pass_over(iterator, passed) or passed == steps:
                    return resume.passed_logs(self), state
                iterator = itertools.islice(iterator, steps - passed)
            feed = self._held_out_feed
            if feed is not None and (
                steps > 1 or keras.distribution.distribution() is not None
            ):
                iterator = feed.wrap(iterator)
            elif feed is not None:
                iterator = feed.wrap_measured(
                    iterator,
                    lambda batch: self._measured(state, batch),
                    len(self.head_names),
                )
            return step(state, iterator)

        self.train_function = train_function
        return train_function

    def _measured(self, state, batch):
        """Every head's loss on the `HeldOutBatch` `batch` at the weights of
        `state` (compiled on its own, once per batch shape), ready before
        the step takes `state` over."""
        if self._measure_function is None:

            def measure(trainable, non_trainable, x, y):
                with self._stateless((trainable, non_trainable, [])):
                    return self._measure_held_out(x, y)

            self._measure_function = jax.jit(measure)
        losses = self._measure_function(state[0], state[1], batch.x, batch.y)
        return jax.block_until_ready(losses)

    def _held_out_batches(self, dataset):
        """Under a `keras.distribution` (e.g. `DataParallel`), each held-out
        batch is laid out over the devices as Keras lays out a training
        batch (with several processes: this process's share of a global
        batch)."""
        batches = super()._held_out_batches(dataset)
        if keras.distribution.distribution() is None:
            return batches
        from keras.src.backend.jax.trainer import _distribute_data

        return (_distribute_data(batch) for batch in batches)

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

    def _refs(self):
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.metrics_variables,
        )

    @contextlib.contextmanager
    def _stateless(self, values):
        """A `StatelessScope` with the variables mapped to `values`
        (trainable, non-trainable, metrics); yields a list that holds the
        new values on exit."""
        refs = self._refs()
        mapping = []
        for ref_vars, vals in zip(refs, values):
            mapping.extend(zip(ref_vars, vals))
        new_values = []
        with keras.StatelessScope(state_mapping=mapping) as scope:
            yield new_values
        for ref_vars, vals in zip(refs, values):
            updated = []
            for ref_v, v in zip(ref_vars, vals):
                new_v = scope.get_current_value(ref_v)
                updated.append(v if new_v is None else new_v)
            new_values.append(updated)

    @contextlib.contextmanager
    def _state_scope(self):
        c = self._carried
        with self._stateless((c.trainable, c.non_trainable, c.metrics)) as new:
            yield
        c.trainable, c.non_trainable, c.metrics = new

    def _loss_and_gradients(self, batch, scale=None):
        c = self._carried

        def scaled(loss):
            return loss if scale is None else loss * scale

        def loss_fn(trainable):
            values = (trainable, c.non_trainable, c.metrics)
            with self._stateless(values) as new:
                total, aux = self._compute_loss(batch, training=True)
            return scaled(total), (total, aux, new[1])

        heads = self._head_gradient_indices()
        if not heads:
            (_, (total, aux, c.non_trainable)), grads = jax.value_and_grad(
                loss_fn, has_aux=True
            )(c.trainable)
            return total, aux, grads, {}

        # The total and the named heads' losses from one forward pass, one
        # backward pass each.
        def losses_fn(trainable):
            scaled_total, (total, aux, non_trainable) = loss_fn(trainable)
            losses = [scaled_total] + [
                scaled(aux[1][i]) for i in heads.values()
            ]
            return jax.numpy.stack(losses), (total, aux, non_trainable)

        losses, vjp, (total, aux, c.non_trainable) = jax.vjp(
            losses_fn, c.trainable, has_aux=True
        )
        basis = jax.numpy.eye(losses.shape[0], dtype=losses.dtype)
        grads = vjp(basis[0])[0]
        head_grads = {h: vjp(basis[k + 1])[0] for k, h in enumerate(heads)}
        return total, aux, grads, head_grads

    def _loss_scale(self):
        """The loss scale of the step's optimizer state values."""
        mapping = list(zip(self.optimizer.variables, self._carried.optimizer))
        with keras.StatelessScope(state_mapping=mapping):
            return super()._loss_scale()

    def _apply_if_finite(self, finite, grads):
        """The optimizer step on the state values, skipped (both taken as
        they were) on a step that was not finite."""
        c = self._carried
        # Both branches give lists (the state may come as tuples).
        c.trainable, c.optimizer = keras.ops.cond(
            finite,
            lambda: tuple(
                map(
                    list,
                    self.optimizer.stateless_apply(
                        c.optimizer, grads, c.trainable
                    ),
                )
            ),
            lambda: (list(c.trainable), list(c.optimizer)),
        )

    def train_step(self, state, data):
        self._carried = _Carried(*state)
        try:
            logs = self._train_step(data)
            c = self._carried
        finally:
            self._carried = None
        return logs, (c.trainable, c.non_trainable, c.optimizer, c.metrics)

    def test_step(self, state, data):
        trainable, non_trainable, metrics = state
        self._carried = _Carried(trainable, non_trainable, [], metrics)
        try:
            logs = self._test_step(data)
            c = self._carried
        finally:
            self._carried = None
        return logs, (c.trainable, c.non_trainable, c.metrics)
