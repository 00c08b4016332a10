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
  same new state, the one a single device would;
- a balancer that transforms gradients gets those of the global batch:
  the replicas' gradients (and head gradients) are summed before
  `transform_gradients`, and each replica hands the optimizer its share
  (`1 / replicas`) of the result (`_balancer_step`);
- sums over the batch that a balancer's loss reads (PMR's prototype
  scores, `balancers.common.replica_sum`) are summed over the replicas
  while the loss is computed.

`MultiWorkerMirroredStrategy` (one process per worker) trains the same
way; for it the model builds on one replica's share of the first batch
(`_maybe_symbolic_build`), the collectives' inputs are placed on the
worker's device (`_placed`), and the logs carry the axis along which
Keras averages them over the workers (`_for_multi_worker_reduction`).
"""

import contextlib

import keras
import tensorflow as tf

from keras_olm.balancers.common import summing_over_replicas
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


def _placed(tensor):
    """`tensor`, on its replica's device.

    A collective sends to the devices its inputs name. Under
    `MultiWorkerMirroredStrategy` with one device per worker, a tensor
    made in the step names none (the worker runs the step without a
    device scope); it is copied onto the worker's device.
    """
    tensor = tf.convert_to_tensor(tensor)
    if tensor.device:
        return tensor
    devices = tf.distribute.get_strategy().extended.worker_devices
    if len(devices) != 1:
        return tensor
    with tf.device(devices[0]):
        return tf.identity(tensor)


def _all_reduce(context, op, value):
    """`context.all_reduce` of a structure of tensors, placed."""
    return context.all_reduce(op, tf.nest.map_structure(_placed, value))


def _replica_sum(x):
    """`x` summed over the replicas of the current replica context."""
    return _all_reduce(replica_context(), tf.distribute.ReduceOp.SUM, x)


def _sum_gradients(context, grads):
    """The gradients (a list, `None` entries kept) summed over the
    replicas, in one batched all-reduce."""
    present = [i for i, g in enumerate(grads) if g is not None]
    summed = _all_reduce(
        context, tf.distribute.ReduceOp.SUM, [grads[i] for i in present]
    )
    out = list(grads)
    for i, g in zip(present, summed):
        out[i] = g
    return out


def _gather(context, tensors):
    """Every tensor of the structure, concatenated over the replicas along
    the batch axis."""
    return tf.nest.map_structure(
        lambda t: None if t is None else context.all_gather(_placed(t), 0),
        tensors,
    )


class _HeldOutSlot:
    """Held-out losses measured on the host for the next training step
    (`losses`, `(num_heads,)`) and `flag` (1.0 until a step reads them):
    two float32 `tf.Variable`s, not part of the model's weights."""

    def __init__(self, num_heads):
        self.losses = tf.Variable(tf.zeros((num_heads,)), trainable=False)
        self.flag = tf.Variable(0.0, trainable=False)
        self.pending = False


class StepMixin(TrainingStep):
    _held_out_slot = None
    _measure_function = None

    def _loss_and_gradients(self, batch, scale=None):
        heads = self._head_gradient_indices()

        def scaled(loss):
            # Divided by the number of replicas (none: as it is): the
            # optimizer sums the replicas' gradients; times the loss scale.
            loss = keras.src.losses.loss.scale_loss_for_distribution(loss)
            return loss if scale is None else loss * scale

        summing = summing_over_replicas(
            None if replica_context() is None else _replica_sum
        )
        with tf.GradientTape(persistent=bool(heads)) as tape, summing:
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
        held_out_losses = _all_reduce(
            context, tf.distribute.ReduceOp.MEAN, held_out_losses
        )
        return y, logits, features, held_out_losses

    def _balancer_step(self, grads, batch, aux, held_out, head_grads=None):
        """The shared step's; under a strategy with several replicas, a
        balancer that transforms gradients gets the global batch's.

        Each replica's gradients are those of its share of the loss
        (divided by the number of replicas), and the optimizer sums them
        over the replicas. A transform that is not linear in the
        gradients (MMPareto's cosines and min-norm weights, OGM-GE's
        noise, which scales with the gradients' spread) would combine
        each replica's share on its own, so the gradients and the head
        gradients are summed over the replicas first (one all-reduce
        each), every replica transforms the same global gradients, and
        hands the optimizer its share of them.
        """
        context = replica_context()
        if context is None or not self.balancer.transforms_gradients:
            return super()._balancer_step(
                grads, batch, aux, held_out, head_grads
            )
        grads = _sum_gradients(context, grads)
        head_grads = {
            h: _sum_gradients(context, g) for h, g in (head_grads or {}).items()
        }
        grads, aux, new_state = super()._balancer_step(
            grads, batch, aux, held_out, head_grads
        )
        share = 1.0 / context.num_replicas_in_sync
        grads = [None if g is None else g * share for g in grads]
        return grads, aux, new_state

    def _any_replica(self, flags):
        context = replica_context()
        if context is None:
            return flags
        return _all_reduce(context, tf.distribute.ReduceOp.SUM, flags)

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build under a strategy, on one replica's share
        of the first batch.

        Keras reduces the first distributed batch (`strategy.reduce`) to
        get a batch to build on; `MultiWorkerMirroredStrategy`'s reduce
        takes no dict of per-replica inputs (a plain `keras.Model` with
        dict inputs fails there too). The share of the first local
        replica has the same structure and shapes.
        """
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, it in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                next(it),
            )
            break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _held_out_batches(self, dataset):
        """TensorFlow tensors straight from tf.data, as Keras' step gets."""
        return iter(dataset)

    def _attach_held_out(self, fit_inputs, dataset, period):
        if self._held_out_slot is not None:
            self._held_out_slot.flag.assign(0.0)
            self._held_out_slot.pending = False
        return super()._attach_held_out(fit_inputs, dataset, period)

    def _held_out_losses(self, batch):
        """The shared step's; a step with no held-out input reads the
        losses staged in `_held_out_slot` (flag 0 when none are) and
        clears the flag."""
        slot = self._held_out_slot
        if batch is not None or slot is None:
            return super()._held_out_losses(batch)
        losses, flag = slot.losses.read_value(), slot.flag.read_value()
        with tf.control_dependencies([losses, flag]):
            slot.flag.assign(0.0)
        return losses, flag

    def _stage_held_out(self, feed):
        """Measures the next held-out batch at the current weights into
        `_held_out_slot`, for the step about to run (once: a call that
        ends the epoch instead of stepping leaves it staged)."""
        slot = self._held_out_slot
        if slot.pending:
            return
        if self._measure_function is None:
            self._measure_function = tf.function(
                self._measure_held_out, reduce_retracing=True, autograph=False
            )
        batch = feed.next_batch()
        slot.losses.assign(self._measure_function(batch.x, batch.y))
        slot.flag.assign(1.0)
        slot.pending = True

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

        With one step per call on one device, a call whose step reads
        held-out data runs Keras' compiled step too: the held-out losses
        are measured on the host first (`_stage_held_out`, a forward pass
        compiled on its own), and the step reads them from
        `_held_out_slot`. The training step is then traced once.
        """
        if self.train_function is not None and not force:
            return self.train_function
        if (
            self._held_out_slot is None
            and self.balancer.needs_held_out
            and self._distribute_strategy is None
        ):
            self._held_out_slot = _HeldOutSlot(len(self.head_names))
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
            if not passed and steps == 1 and self._held_out_slot is not None:
                self._stage_held_out(feed)
                logs = step(iterator)
                self._held_out_slot.pending = False
                return logs
            batches = take(iterator, steps)
            if not batches:
                raise StopIteration
            if feed is not None:
                batches = [feed.merge(batch) for batch in batches]
            return step_on_batches(batches)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return _for_multi_worker_reduction(self._train_step(data))

    def test_step(self, data):
        return _for_multi_worker_reduction(self._test_step(data))


def _for_multi_worker_reduction(logs):
    """The logs of a step, each with a leading axis of 1 under a
    `MultiWorkerMirroredStrategy` over several workers.

    There Keras' step averages every log over the replicas along axis 0
    (`strategy.reduce("MEAN", value, axis=0)`), which a scalar does not
    have; with the axis added, the average comes back in the log's own
    shape.
    """
    strategy = tf.distribute.get_strategy()
    if not (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return logs
    return {k: tf.expand_dims(v, 0) for k, v in logs.items()}
