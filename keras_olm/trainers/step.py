"""The training and test step of `BalancedMultimodalModel`, in `keras.ops`.

`TrainingStep` is the backend-agnostic step. A training step:

1. unpacks the batch (`held_out.unpack`) and, on steps that carry a
   held-out batch, measures every head's held-out loss;
2. computes the loss and its gradients (`_loss_and_gradients`);
3. lets the balancer transform the gradients and compute its new state
   (`_balancer_step`: `transform_gradients` and `update`), before the
   optimizer step: from this step's forward pass and the weights it
   read; nothing assigned yet;
4. checks the loss, every head's loss, the gradients, the held-out losses
   and the balancer's new state for NaN and infinity (`TrainingState`);
5. if all are finite, applies the gradients (`_apply_if_finite`), then
   assigns the balancer's new state, and counts the step;
6. updates the metrics. `NonFiniteGuard` raises after a step that was
   not finite (`state.raise_if_faulted`).

Each backend's trainer (`keras_olm/trainers/{tensorflow,jax,torch}_trainer
.py`) derives from it and provides the two things that differ between
backends, as Keras' own `keras/src/backend/*/trainer.py` do:

- `_loss_and_gradients(batch)`: how gradients are taken (a
  `tf.GradientTape`, `jax.value_and_grad`, `loss.backward()`);
- `_state_scope()`: how state is carried through the step's other pieces
  (TensorFlow: variables as they are; torch: the same, without autograd;
  JAX: the step's state tuple, mapped onto the variables).

and overrides, where its backend needs it, `_apply_if_finite`,
`_held_out_losses`, `_held_out_batches`, `_build_scope`, `_global_batch`,
`_any_replica` and `_sync_training_state`. It also wires the
`HeldOutFeed` into its `make_train_function` (`HeldOutFeed.merge` on the
host batches of the steps that read held-out data).
"""

import contextlib

import keras
from keras import ops

from keras_olm import held_out as held_out_lib
from keras_olm.balancers.base import StepRecord
from keras_olm.inputs import LABEL
from keras_olm.layers.base import FUSED
from keras_olm.trainers import loss_scale
from keras_olm.trainers.state import FAULTS_LOG
from keras_olm.trainers.state import any_non_finite
from keras_olm.trainers.state import is_float


class TrainingStep:
    """The shared training and test step; mixed into the model.

    It reads the model's `balancer`, `head_names`, `modalities`,
    `encoders`, regression heads and metric trackers, and calls
    `_forward_with_features` and `_regress`.
    """

    _held_out_feed = None
    _gradient_groups = None

    # --- what each backend provides -----------------------------------

    def _loss_and_gradients(self, batch, scale=None):
        """Forward pass, loss and gradients of the trainable variables.

        Args:
            batch: a `StepBatch`.
            scale: float32 scalar tensor or `None`. The optimizer's loss
                scale (`trainers/loss_scale.py`): the gradients are those
                of the losses multiplied by it. `None` for no scaling.

        Returns:
            `(total, aux, grads, head_grads)`: the scalar loss, the `aux`
            of `_compute_loss`, one gradient per trainable variable, and
            for every head named in the balancer's `head_gradients` the
            gradients of that head's loss alone (`_head_gradient_indices`),
            as a dict (empty when it names none).
        """
        raise NotImplementedError

    def _state_scope(self):
        """A context in which the step's shared pieces read and assign
        the model's variables (the current values of this step)."""
        raise NotImplementedError

    # --- defaults a backend may override -----------------------------

    def _apply_if_finite(self, finite, grads):
        """`optimizer.apply`, skipped on a step that was not finite.

        A branch, as Keras' `LossScaleOptimizer` does: a skipped step
        moves no weight and no optimizer moment.
        """
        variables = self.trainable_variables

        def apply():
            self.optimizer.apply(grads, variables)

        with self._state_scope():
            ops.cond(finite, apply, lambda: None)

    def _loss_scale(self):
        """The optimizer's current loss scale (a float32 scalar)."""
        return loss_scale.current_scale(self.optimizer)

    def _held_out_batches(self, dataset):
        """The batches of the endless held-out `dataset`, in the form the
        backend's step takes its inputs; numpy here (the jitted JAX step
        moves them)."""
        return dataset.as_numpy_iterator()

    def _attach_held_out(self, fit_inputs, dataset, period):
        """Feeds held-out batches from the host (`HeldOutFeed`).

        Args:
            fit_inputs: the training inputs, a `held_out.FitInputs`.
            dataset: the held-out `tf.data.Dataset`.
            period: int. A held-out batch every `period` steps.

        Returns:
            The `FitInputs` to hand to Keras' `fit`.
        """

        def make_batches(skip):
            return self._held_out_batches(held_out_lib.rotated(dataset, skip))

        self._held_out_feed = held_out_lib.HeldOutFeed(
            make_batches,
            period,
            self._global_step,
            held_out_lib.num_batches(dataset),
        )
        return fit_inputs

    def _global_step(self):
        """Training steps applied so far, over every `fit` call."""
        return self.training_state.global_step()

    def _global_batch(self, y, logits, features, held_out_losses):
        """The measurements of the whole global batch, for the balancer.

        On one device, the batch's own. A backend that trains on several
        replicas or processes at once gathers labels, logits and features
        from all of them and averages the held-out losses, so that every
        replica computes the balancer state one device would.
        """
        return y, logits, features, held_out_losses

    def _any_replica(self, flags):
        """The int32 fault flags summed over every replica or process (as
        they are on one device), so that all of them skip alike."""
        return flags

    def _build_scope(self):
        """A context in which `fit` builds the model's variables."""
        return contextlib.nullcontext()

    def _fit_scope(self, x=None):
        """A context around Keras' `fit` on `x` (torch: its threads)."""
        return contextlib.nullcontext()

    def _head_gradient_indices(self):
        """`{head: index into head_losses}` of the heads whose own loss
        gradients the balancer reads (`Balancer.head_gradients`)."""
        names = list(self.balancer.head_gradients)
        unknown = [h for h in names if h not in self.head_names]
        if unknown:
            raise ValueError(
                f"{type(self.balancer).__name__}.head_gradients names "
                f"{unknown}, which are not heads of this model "
                f"({self.head_names})."
            )
        return {h: self.head_names.index(h) for h in names}

    def _sync_training_state(self):
        """Writes the state of the last finished step into the variables;
        nothing to do where the variables are always current."""

    # --- the steps ----------------------------------------------------

    def _train_step(self, data):
        """One training step; returns the logs."""
        batch = held_out_lib.unpack(data)
        scale = None
        with self._state_scope():
            held_out = self._held_out_losses(batch.held_out)
            if loss_scale.scales_loss(self.optimizer):
                scale = self._loss_scale()
        total, aux, grads, head_grads = self._loss_and_gradients(batch, scale)
        if scale is not None:
            grads = loss_scale.unscale(grads, scale)
            head_grads = {
                h: loss_scale.unscale(g, scale) for h, g in head_grads.items()
            }
        overflow = ops.zeros((), "bool")
        with self._state_scope():
            grads, aux, new_state = self._balancer_step(
                grads, batch, aux, held_out, head_grads
            )
            flags = self._non_finite_flags(
                total, aux, grads, held_out, new_state
            )
            if scale is not None:
                h, m = len(self.head_names), len(self.modalities)
                flags, overflow = loss_scale.mask_overflow(
                    flags, range(1 + h, 2 + h + m), len(flags) - 1, grads
                )
            faults, ok = self.training_state.record(
                self._any_replica(ops.cast(ops.stack(flags), "int32")) > 0
            )
        if scale is not None:
            grads = loss_scale.rescale(grads, scale)
        self._apply_if_finite(ok, grads)
        with self._state_scope():
            self.balancer.assign_if_finite(
                new_state, ops.logical_and(ok, ops.logical_not(overflow))
            )
            self.training_state.count_step(ok)
            logs = self._step_logs(batch, total, aux)
            logs[FAULTS_LOG] = faults
            return logs

    def _test_step(self, data):
        """One test step; returns the logs."""
        batch = held_out_lib.unpack(data)
        with self._state_scope():
            total, (logits, head_losses, _, predictions) = self._compute_loss(
                batch, training=False
            )
            return self._update_metrics(
                batch.y,
                batch.sample_weight,
                total,
                logits,
                head_losses,
                predictions,
            )

    # --- the pieces ---------------------------------------------------

    def _labels(self, y):
        if isinstance(y, dict):
            y = y[LABEL]
        y = ops.convert_to_tensor(y)
        if len(y.shape) > 1:
            y = ops.reshape(y, (-1,))
        return ops.cast(y, "int32")

    def _compute_loss(self, batch, training=True):
        """Forward pass and loss; what `_loss_and_gradients` differentiates.

        Returns:
            `(total, aux)` with `aux = (logits, head_losses, features,
            regression predictions)`.
        """
        y, sample_weight = batch.y, batch.sample_weight
        logits, features = self._forward_with_features(
            batch.x, training=training
        )
        total, head_losses = self.balancer.compute_loss(
            self._labels(y), logits, sample_weight, features=features
        )
        predictions = self._regress(features)
        if predictions:
            targets = self._regression_values(y)
            regression_loss = sum(
                squared_error(targets[n], predictions[n], sample_weight)
                for n in self.regression_targets
            )
            total = total + self.regression_weight * regression_loss
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total, (logits, head_losses, features, predictions)

    def _regression_values(self, y):
        """The regression targets of a batch, `(batch, width)` float."""
        return {
            name: ops.reshape(
                ops.cast(ops.convert_to_tensor(y[name]), "float32"),
                (-1, width),
            )
            for name, width in self.regression_targets.items()
        }

    def _raw_head_losses(self, y, logits):
        """Unweighted cross-entropy of every head, `(num_heads,)`."""
        y = self._labels(y)
        # Every head gives (batch, num_classes): one call over the heads'
        # logits stacked into rank-2 rows (a rank-3 call makes TensorFlow
        # add a shape Assert that XLA drops with a warning).
        num_heads = len(self.head_names)
        stacked = ops.concatenate([logits[h] for h in self.head_names])
        labels = ops.tile(y, (num_heads,))
        per_sample = keras.losses.sparse_categorical_crossentropy(
            labels, stacked, from_logits=True
        )
        return ops.mean(ops.reshape(per_sample, (num_heads, -1)), axis=-1)

    def _held_out_losses(self, batch):
        """Per-head held-out losses of this step (or zeros) and the flag
        that says whether they were measured, from what the feed added: a
        `HeldOutBatch` (measured here), `HeldOutLosses` or `None`."""
        if batch is None or not self.balancer.needs_held_out:
            return ops.zeros((len(self.head_names),)), ops.zeros(())
        if isinstance(batch, held_out_lib.HeldOutLosses):
            return batch.losses, batch.flag  # float32, measured before
        return self._measure_held_out(batch.x, batch.y), ops.ones(())

    def _measure_held_out(self, x, y):
        """Every head's inference loss on `(x, y)`: float32, no gradient."""
        losses = self._raw_head_losses(y, self._forward(x, training=False))
        return ops.cast(ops.stop_gradient(losses), "float32")

    def _gradient_groups_by_modality(self):
        """Indices into `trainable_variables` of each encoder's variables."""
        if self._gradient_groups is None:
            index = {id(v): i for i, v in enumerate(self.trainable_variables)}
            self._gradient_groups = {
                m: [
                    index[id(v)]
                    for v in self.encoders[m].trainable_variables
                    if id(v) in index
                ]
                for m in self.modalities
            }
        return self._gradient_groups

    def _balancer_step(self, grads, batch, aux, held_out, head_grads=None):
        """The balancer's gradient hook and its state update, not assigned.

        Both run before the optimizer step, on what the forward pass
        measured and on the weights as the forward pass read them (the
        optimizer step has not moved them yet), so that their new state
        can be checked with the loss and the gradients before anything is
        applied; the caller assigns it after the optimizer step. The
        gradient hook also gets the batch's inputs, a `forward` on altered
        inputs and the separate head-loss gradients (`head_grads`) in its
        `StepRecord`.

        Returns:
            `(grads, aux, new_state)`: the gradients to apply, the step's
            `aux`, detached, and the balancer's new state as a list of
            `(variable, value)` pairs.
        """
        aux = _detached(aux)
        logits, _, features, _ = aux
        y = local_y = self._labels(batch.y)
        held_out_losses, held_out_flag = held_out
        if self.balancer.measures_steps or self.balancer.transforms_gradients:
            y, logits, features, held_out_losses = self._global_batch(
                y, logits, features, held_out_losses
            )

        def forward(inputs):
            probe = self._forward(inputs, training=False)
            probe = {h: ops.stop_gradient(v) for h, v in probe.items()}
            return self._global_batch(local_y, probe, {}, held_out_losses)[1]

        step = StepRecord(
            y=y,
            logits=logits,
            features=features,
            inputs=batch.x,
            forward=forward,
            head_gradients=head_grads or {},
        )
        grads, new_state = self.balancer.transform_gradients(
            grads,
            self.trainable_variables,
            self._gradient_groups_by_modality(),
            step,
        )
        new_state = list(new_state)
        if self.balancer.measures_steps:
            if not self.balancer.update_reads_features:
                # Only a balancer that declares it reads them gets them.
                features = None
            new_state += self._balancer_update(
                y, logits, held_out_losses, held_out_flag, features
            )
        return grads, aux, new_state

    def _balancer_update(
        self, y, logits, held_out_losses, held_out_flag, features
    ):
        """The balancer's `state_update` from one step's measurements, as
        `(variable, value)` pairs (not assigned)."""
        return self.balancer.state_update(
            StepRecord(
                y=y,
                logits=logits,
                head_losses=self._raw_head_losses(y, logits),
                held_out_losses=held_out_losses,
                held_out_flag=held_out_flag,
                features=features,
            )
        )

    def _non_finite_flags(self, total, aux, grads, held_out, new_state):
        """Whether each checked part of the step holds a NaN or an
        infinity: bool scalars in `fault_names` order."""
        _, head_losses, _, _ = aux
        held_out_losses, held_out_flag = held_out
        flags = [any_non_finite([total])]
        flags += [
            ops.logical_not(ops.isfinite(head_losses[i]))
            for i in range(len(self.head_names))
        ]
        groups = self._gradient_groups_by_modality()
        grouped = set()
        for m in self.modalities:
            flags.append(any_non_finite([grads[i] for i in groups[m]]))
            grouped.update(groups[m])
        flags.append(
            any_non_finite([g for i, g in enumerate(grads) if i not in grouped])
        )
        flags.append(
            ops.logical_and(
                held_out_flag > 0, any_non_finite([held_out_losses])
            )
        )
        flags.append(any_non_finite([v for _, v in new_state if is_float(v)]))
        return flags

    def fault_names(self):
        """What each entry of the step's fault vector checks, in order."""
        return (
            ["the total loss"]
            + [f"the loss of head '{h}'" for h in self.head_names]
            + [f"the gradients of the {m} encoder" for m in self.modalities]
            + ["the gradients of the fusion layer and the heads"]
            + ["the held-out losses (from held_out_data)"]
            + [f"the balancer's new state ({type(self.balancer).__name__})"]
        )

    def _step_logs(self, batch, total, aux):
        """Metrics and balancer logs after the step."""
        logits, head_losses, _, predictions = aux
        logs = self._update_metrics(
            batch.y,
            batch.sample_weight,
            ops.stop_gradient(total),
            logits,
            head_losses,
            predictions,
        )
        logs.update(self.balancer.step_logs())
        return logs

    def _update_metrics(
        self, y, sample_weight, total, logits, head_losses, predictions
    ):
        if predictions:
            values = self._regression_values(y)
            for i, name in enumerate(self.regression_targets):
                for metric in (self.regression_mse[i], self.regression_mae[i]):
                    metric.update_state(
                        values[name], predictions[name], sample_weight
                    )
        y = self._labels(y)
        self._loss_tracker.update_state(total)
        for i, h in enumerate(self.head_names):
            self.head_loss_trackers[i].update_state(head_losses[i])
            self.head_accuracies[i].update_state(
                y, logits[h], sample_weight=sample_weight
            )
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(
                y, ops.softmax(logits[FUSED], axis=-1), sample_weight
            )
        logs = {}
        for metric in self.metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs


def squared_error(target, prediction, sample_weight=None):
    """Mean squared error of one regression head (mean over the batch)."""
    per_sample = ops.mean(ops.square(target - prediction), axis=-1)
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(
            ops.reshape(sample_weight, (-1,)), per_sample.dtype
        )
    return ops.mean(per_sample)


def _detached(aux):
    """Detached `(logits, head_losses, features, regression)` of a step."""
    logits, head_losses, features, predictions = aux
    return (
        {h: ops.stop_gradient(v) for h, v in logits.items()},
        ops.stop_gradient(head_losses),
        {m: ops.stop_gradient(v) for m, v in features.items()},
        {n: ops.stop_gradient(v) for n, v in predictions.items()},
    )
