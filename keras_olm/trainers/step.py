"""The training and test step of `BalancedMultimodalModel`, in `keras.ops`.

`TrainingStep` is the backend-agnostic step. A training step:

1. unpacks the batch (`held_out.unpack`) and, on steps that carry a
   held-out batch, measures every head's held-out loss;
2. computes the loss and its gradients (`_loss_and_gradients`);
3. lets the balancer transform the gradients;
4. applies them, unless the loss was not finite (`_apply_if_finite`);
5. lets the balancer update its state and updates the metrics.

Each backend's trainer (`keras_olm/trainers/{tensorflow,jax,torch}_trainer
.py`) derives from it and provides the two things that differ between
backends, as Keras' own `keras/src/backend/*/trainer.py` do:

- `_loss_and_gradients(batch)`: how gradients are taken (a
  `tf.GradientTape`, `jax.value_and_grad`, `loss.backward()`);
- `_state_scope()`: how state is carried through the step's other pieces
  (TensorFlow: variables as they are; torch: the same, without autograd;
  JAX: the step's state tuple, mapped onto the variables).

and overrides, where its backend needs it, `_apply_if_finite`,
`_update_balancer`, `_held_out_batches`, `_attach_held_out` and
`_sync_training_state`. It also wires the `HeldOutFeed` into its
`make_train_function`.
"""

import math

import keras
from keras import ops

from keras_olm import held_out as held_out_lib
from keras_olm.balancers.base import StepRecord
from keras_olm.inputs import LABEL
from keras_olm.layers.base import FUSED


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produced a NaN or infinite loss."""


class TrainingStep:
    """The shared training and test step; mixed into the model.

    It reads the model's `balancer`, `head_names`, `modalities`,
    `encoders`, regression heads and metric trackers, and calls
    `_forward_with_features` and `_regress`.
    """

    _held_out_feed = None
    _gradient_groups = None

    # --- what each backend provides -----------------------------------

    def _loss_and_gradients(self, batch):
        """Forward pass, loss and gradients of the trainable variables.

        Args:
            batch: a `StepBatch`.

        Returns:
            `(total, aux, grads)`: the scalar loss, the `aux` of
            `_compute_loss` and one gradient per trainable variable.
        """
        raise NotImplementedError

    def _state_scope(self):
        """A context in which the step's shared pieces read and assign
        the model's variables (the current values of this step)."""
        raise NotImplementedError

    # --- defaults a backend may override -----------------------------

    def _apply_if_finite(self, finite, grads):
        """`optimizer.apply`, skipped on a step with a non-finite loss.

        A branch, as Keras' `LossScaleOptimizer` does: a skipped step
        moves no weight and no optimizer moment.
        """
        variables = self.trainable_variables

        def apply():
            self.optimizer.apply(grads, variables)

        with self._state_scope():
            ops.cond(finite, apply, lambda: None)

    def _update_balancer(self, *measurements):
        """Runs the balancer update in the step as it is."""
        self._balancer_update_fn(*measurements)

    def _held_out_batches(self, dataset):
        """The held-out batches, endlessly, in the form the backend's step
        takes its inputs; numpy here (the jitted JAX step moves them)."""
        return dataset.repeat().as_numpy_iterator()

    def _attach_held_out(self, fit_inputs, dataset, period):
        """Feeds held-out batches from the host (`HeldOutFeed`).

        Args:
            fit_inputs: the training inputs, a `held_out.FitInputs`.
            dataset: the held-out `tf.data.Dataset`.
            period: int. A held-out batch every `period` steps.

        Returns:
            The `FitInputs` to hand to Keras' `fit`.
        """
        self._held_out_feed = held_out_lib.HeldOutFeed(
            self._held_out_batches(dataset), period
        )
        return fit_inputs

    def _sync_training_state(self):
        """Writes the state of the last finished step into the variables;
        nothing to do where the variables are always current."""

    # --- the steps ----------------------------------------------------

    def _train_step(self, data):
        """One training step; returns the logs."""
        batch = held_out_lib.unpack(data)
        with self._state_scope():
            held_out = self._held_out_losses(batch.held_out)
        total, aux, grads = self._loss_and_gradients(batch)
        with self._state_scope():
            grads, finite, aux = self._transform_gradients(
                grads, total, batch.y, aux
            )
        self._apply_if_finite(finite, grads)
        with self._state_scope():
            return self._after_train_step(batch, total, aux, held_out, finite)

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
        # Every head gives (batch, num_classes): one call over the stacked
        # heads.
        stacked = ops.stack([logits[h] for h in self.head_names])
        labels = ops.broadcast_to(y, ops.shape(stacked)[:-1])
        per_sample = keras.losses.sparse_categorical_crossentropy(
            labels, stacked, from_logits=True
        )
        return ops.mean(per_sample, axis=-1)

    def _held_out_losses(self, batch):
        """Per-head losses on the `HeldOutBatch` `batch` (or zeros), and
        the flag that says whether they were measured."""
        zeros = ops.zeros((len(self.head_names),))
        if batch is None or not self.balancer.needs_held_out:
            return zeros, ops.zeros(())

        def measure():
            logits = self._forward(batch.x, training=False)
            return ops.stop_gradient(self._raw_head_losses(batch.y, logits))

        if batch.flag is None:
            # Fed from the host, which adds held-out batches only to the
            # steps that read them: nothing to branch on.
            return measure(), ops.ones(())
        return ops.cond(batch.flag > 0, measure, lambda: zeros), batch.flag

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

    def _transform_gradients(self, grads, total, y, aux):
        """The balancer's gradient hook.

        Returns:
            `(grads, finite, aux)`: the gradients to apply, whether the
            step's loss was finite and the step's `aux`, detached.
        """
        aux = _detached(aux)
        logits, _, features, _ = aux
        finite = ops.all(ops.isfinite(total))
        step = StepRecord(
            y=self._labels(y), logits=logits, finite=finite, features=features
        )
        grads = self.balancer.apply_transform_gradients(
            grads,
            self.trainable_variables,
            self._gradient_groups_by_modality(),
            step,
        )
        return grads, finite, aux

    def _after_train_step(self, batch, total, aux, held_out, finite):
        """Balancer update and metrics after the optimizer step.

        Args:
            batch: the step's `StepBatch`.
            aux: the step's detached `aux`, from `_transform_gradients`.
            held_out: `(losses, flag)` from `_held_out_losses`.
            finite: whether the total loss was finite.
        """
        logits, head_losses, features, predictions = aux
        held_out_losses, held_out_flag = held_out
        if self.balancer.measures_steps:
            # A non-finite head or held-out loss must not enter the
            # balancer either.
            measured = ops.concatenate([head_losses, held_out_losses])
            finite = ops.logical_and(finite, ops.all(ops.isfinite(measured)))
            if not self.balancer.update_reads_features:
                # Not passed: on TensorFlow the update is a separate XLA
                # cluster and its inputs are copied into it.
                features = None
            self._update_balancer(
                self._labels(batch.y),
                logits,
                held_out_losses,
                held_out_flag,
                finite,
                features,
            )
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

    def _balancer_update_fn(
        self, y, logits, held_out_losses, held_out_flag, finite, features
    ):
        """The balancer's state update from one step's measurements."""
        self.balancer.apply_update(
            StepRecord(
                y=y,
                logits=logits,
                finite=finite,
                head_losses=self._raw_head_losses(y, logits),
                held_out_losses=held_out_losses,
                held_out_flag=held_out_flag,
                features=features,
            )
        )
        return ops.zeros(())

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


def ordered_logs(logs, modalities, regression_targets=()):
    """`logs` in the order the progress bar shows them.

    The loss, the compiled metrics, the fused head's loss and accuracy,
    regression errors, each modality's loss and accuracy, the balancer's
    logs (e.g. OLM's coefficients) in head order; then the same for the
    `val_` logs.
    """
    heads = [FUSED, *modalities]
    prefixes = tuple(f"{h}_" for h in heads)
    per_head = [f"{h}_{k}" for h in heads for k in ("loss", "acc")]
    regression = [
        f"{n}_{k}" for n in regression_targets for k in ("mse", "mae")
    ]

    def order(keys):
        compiled = [
            k
            for k in keys
            if k != "loss"
            and k not in regression
            and not k.startswith(prefixes)
        ]
        first = ["loss", *compiled, *per_head[:2], *regression, *per_head[2:]]
        rest = [
            k
            for h in [*modalities, FUSED]
            for k in keys
            if k.startswith(f"{h}_") and k not in first
        ]
        known = [k for k in first + rest if k in keys]
        return known + [k for k in keys if k not in known]

    train = [k for k in logs if not k.startswith("val_")]
    val = [k[len("val_") :] for k in logs if k.startswith("val_")]
    keys = order(train) + ["val_" + k for k in order(val)]
    return {k: logs[k] for k in dict.fromkeys(keys)}


class LogOrder(keras.callbacks.Callback):
    """Puts the logs every later callback sees (the progress bar, History)
    in `ordered_logs`' order; Keras hands them over sorted by name."""

    def __init__(self, modalities, regression_targets=()):
        super().__init__()
        self.modalities = list(modalities)
        self.regression_targets = list(regression_targets)
        self._orders = {}

    def _reorder(self, logs):
        if not logs:
            return
        # The keys repeat from step to step: their order is worked out once.
        keys = tuple(logs)
        order = self._orders.get(keys)
        if order is None:
            order = tuple(
                ordered_logs(
                    dict.fromkeys(keys),
                    self.modalities,
                    self.regression_targets,
                )
            )
            self._orders[keys] = order
        values = dict(logs)
        logs.clear()
        logs.update((k, values[k]) for k in order)

    def on_train_batch_end(self, batch, logs=None):
        self._reorder(logs)

    def on_test_batch_end(self, batch, logs=None):
        self._reorder(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._reorder(logs)


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite."""

    def __init__(self, head_names):
        super().__init__()
        self.head_names = head_names
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for h in [f"{h}_loss" for h in self.head_names] + ["loss"]:
            value = logs.get(h)
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                head = h[: -len("_loss")] if h != "loss" else "total"
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"Non-finite loss ({value}) in head '{head}' at epoch "
                    f"{self.epoch + 1}, step {batch + 1}. Training stopped; "
                    "that step's gradients were dropped and the balancer "
                    "state was left as it was before the step."
                )
