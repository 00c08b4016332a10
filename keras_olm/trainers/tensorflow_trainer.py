"""TensorFlow steps: gradients from a `tf.GradientTape`.

Under a `tf.distribute` strategy with more than one replica (e.g.
`MirroredStrategy`), the step runs once per replica on that replica's
share of the global batch, as Keras' own step does:

- each replica differentiates its loss divided by the number of replicas
  (`keras.losses.loss.scale_loss_for_distribution`), and the optimizer
  sums the gradients over the replicas;
- the replicas agree on whether the step was finite (`_any_replica`), and
  the optimizer step is skipped or applied in a cross-replica context, as
  Keras' `LossScaleOptimizer` does (a `cond` in a replica context cannot
  hold the optimizer's `merge_call`);
- the balancer reads the measurements of the whole global batch (labels,
  logits and features gathered from every replica, held-out losses
  averaged over them: `_global_batch`), so every replica computes the
  same new state, the one a single device would.
"""

import contextlib

import keras
import tensorflow as tf

from keras_olm.trainers import resume
from keras_olm.trainers.step import TrainingStep


def replica_context():
    """The replica context of a strategy with several replicas, or `None`
    (no strategy, one replica, or a cross-replica context)."""
    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _gather(context, tensors):
    """Every tensor of the structure, concatenated over the replicas along
    the batch axis."""
    return tf.nest.map_structure(
        lambda t: None if t is None else context.all_gather(t, axis=0),
        tensors,
    )


class StepMixin(TrainingStep):
    _xla_update = None

    def _loss_and_gradients(self, batch, scale=None):
        heads = self._head_gradient_indices()

        def scaled(loss):
            # Divided by the number of replicas (none: as it is): the
            # optimizer sums the replicas' gradients; times the loss scale.
            loss = keras.src.losses.loss.scale_loss_for_distribution(loss)
            return loss if scale is None else loss * scale

        with tf.GradientTape(persistent=bool(heads)) as tape:
            total, aux = self._compute_loss(batch, training=True)
            head_losses = {h: scaled(aux[1][i]) for h, i in heads.items()}
            scaled_total = scaled(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled_total, variables)
        head_grads = {
            h: tape.gradient(loss, variables) for h, loss in head_losses.items()
        }
        del tape
        return total, aux, grads, head_grads

    def _state_scope(self):
        return contextlib.nullcontext()

    def _build_scope(self):
        """The model's `tf.distribute` strategy's scope: a model made in a
        strategy's scope makes its variables there too (mirrored), as
        Keras' own `fit` builds a model."""
        return self.distribute_strategy.scope()

    def _global_batch(self, y, logits, features, held_out_losses):
        """Under a strategy with several replicas: labels, logits and
        features gathered from every replica, held-out losses averaged."""
        context = replica_context()
        if context is None:
            return y, logits, features, held_out_losses
        y, logits, features = _gather(context, (y, logits, features))
        held_out_losses = context.all_reduce(
            tf.distribute.ReduceOp.MEAN, held_out_losses
        )
        return y, logits, features, held_out_losses

    def _any_replica(self, flags):
        context = replica_context()
        if context is None:
            return flags
        return context.all_reduce(tf.distribute.ReduceOp.SUM, flags)

    def _apply_if_finite(self, finite, grads):
        """The shared step's branch; under a strategy with several
        replicas (which agree on `finite`, see `_any_replica`), the branch
        in a cross-replica context."""
        context = replica_context()
        if context is None:
            return super()._apply_if_finite(finite, grads)
        variables = self.trainable_variables
        optimizer = self.optimizer

        def cross_replica(strategy, finite, grads):
            # Every replica holds the same `finite`.
            finite = strategy.experimental_local_results(finite)[0]

            def apply():
                strategy.extended.call_for_each_replica(
                    optimizer.apply, args=(grads, variables)
                )

            # As Keras' `LossScaleOptimizer`: the `cond` in a cross-replica
            # context, where the optimizer's `merge_call` is allowed.
            keras.ops.cond(finite, apply, lambda: None)

        context.merge_call(cross_replica, args=(finite, list(grads)))

    def _balancer_update(self, *measurements):
        """Runs the balancer update as one XLA cluster.

        The update is a few hundred tiny ops; the graph executor dispatches
        each one, XLA fuses them. The rest of the step is left to
        `jit_compile` as the user chose, and under a strategy with several
        replicas the update runs as it is.
        """
        if self.jit_compile or replica_context() is not None:
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

    def _held_out_batches(self, dataset):
        """TensorFlow tensors straight from tf.data, as Keras' step gets."""
        return iter(dataset)

    def make_train_function(self, force=False):
        """Keras' step; a compiled call with a held-out batch runs on a
        list of batches taken from the iterator on the host.

        A call in which no step reads held-out data runs Keras' compiled
        step as it is (it reads the training iterator inside the graph,
        `steps_per_execution` steps at a time). For a call in which one
        does, the call's training batches are taken from the iterator
        here, the `HeldOutFeed` adds the held-out batches to the steps
        that read them, and Keras' step function runs the list, one
        compiled step per batch (it accepts a list of batches as well as
        an iterator). Both are traced once per model, not once per `fit`.
        The feed's count follows the global step: the last call of an
        epoch may run fewer steps than `steps_per_execution`. Batches a
        mid-epoch resume passes over (`resume.batches_to_pass`) are taken
        from the iterator and run no step; a call that has batches left
        after them runs those on a list.
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function
        step_on_batches = self._make_function(self.train_step)

        def take(iterator, count):
            batches = []
            for _ in range(count):
                try:
                    batches.append(next(iterator))
                except (StopIteration, tf.errors.OutOfRangeError):
                    break
            return batches

        def train_function(iterator):
            steps = self.steps_per_execution
            passed = resume.batches_to_pass(self, steps)
            if passed:
                if len(take(iterator, passed)) < passed or passed == steps:
                    return resume.passed_logs(self)
                steps -= passed
            feed = self._held_out_feed
            if feed is not None:
                feed.sync()
            if not passed and (
                feed is None or not feed.due_within(self.steps_per_execution)
            ):
                return step(iterator)
            batches = take(iterator, steps)
            if not batches:
                raise StopIteration
            if feed is not None:
                batches = [feed.merge(batch) for batch in batches]
            return step_on_batches(batches)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return self._train_step(data)

    def test_step(self, data):
        return self._test_step(data)
