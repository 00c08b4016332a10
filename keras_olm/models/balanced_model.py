"""`BalancedMultimodalModel`: heads per modality, a fused head, a balancer.

The math of a training step lives here, in `keras.ops`, shared by the three
backends; `keras_olm/trainers/` holds one short file per backend that only
says how gradients are taken and state is threaded through the step.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_olm import balancers as balancers_lib
from keras_olm.balancers.base import FUSED
from keras_olm.balancers.base import Balancer
from keras_olm.balancers.base import JointTraining
from keras_olm.balancers.base import StepMeasurements
from keras_olm.layers.fusion import LateFusion
from keras_olm.models import inputs as inputs_lib
from keras_olm.trainers import StepMixin


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produced a NaN or infinite loss."""


def _resolve_regression_targets(targets):
    if targets is None:
        return {}
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, (list, tuple)):
        targets = {name: 1 for name in targets}
    if not isinstance(targets, dict):
        raise TypeError(
            "regression_targets must be None, a list of names or a dict "
            f"from name to width; got {type(targets).__name__}."
        )
    out = {}
    for name, width in targets.items():
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"regression target names must be strings; got {name!r}."
            )
        if name == inputs_lib.LABEL:
            raise ValueError(
                f"'{inputs_lib.LABEL}' holds the class labels; rename that "
                "regression target."
            )
        if isinstance(width, bool) or int(width) != width or width < 1:
            raise ValueError(
                f"regression target '{name}' needs a width >= 1; got {width!r}."
            )
        out[name] = int(width)
    return out


def _squared_error(target, prediction, sample_weight=None):
    """Mean squared error of one regression head (mean over the batch)."""
    per_sample = ops.mean(ops.square(target - prediction), axis=-1)
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(
            ops.reshape(sample_weight, (-1,)), per_sample.dtype
        )
    return ops.mean(per_sample)


def _resolve_balancer(balancer):
    if balancer is None:
        return JointTraining(name="balancer")
    if isinstance(balancer, str):
        return balancers_lib.get(balancer, name="balancer")
    if isinstance(balancer, Balancer):
        return balancer
    raise TypeError(
        "balancer must be None, a string or a keras_olm.balancers.Balancer; "
        f"got {type(balancer).__name__}."
    )


@keras.saving.register_keras_serializable(package="keras_olm")
class BalancedMultimodalModel(StepMixin, keras.Model):
    """A multimodal classifier trained with a modality balancer.

    Every modality m has an encoder and its own linear head, and a fusion
    layer joins the encoder outputs for a fused head (Eq. 5 of Zong et al.,
    2024): with M modalities there are M + 1 heads, named after the
    modalities plus `"fused"`. The balancer decides how the heads' losses
    train the model; the default, `OLM()`, modulates each head's logits by
    a coefficient solved online (Eq. 6-9, Algorithm 1).

    Calling the model returns the fused head's class probabilities, so
    `predict` gives `(batch, num_classes)` probabilities. The raw logits of
    every head come from `head_logits` (tensors) or `predict_heads`
    (numpy). OLM's coefficients play no part at inference, as in the
    paper: they only scale the logits inside the training loss.

    `fit` reports the total loss, each head's loss and accuracy (e.g.
    `audio_loss`, `audio_acc`, `fused_acc`) and, for OLM, each head's
    coefficient and λ (`audio_coef`, `audio_lambda`), and the same with
    `val_` for validation data.

    Regression heads (optional, e.g. MER-MULTI's valence): with
    `regression_targets={"valence": 1}` a linear layer on the fused
    feature predicts each target (there are no unimodal regression
    heads; a one-modality model's fused feature is that modality's, so
    it gives the unimodal regression baseline). Their mean squared
    errors, times `regression_weight`, are added to the balancer's loss:
    the balancer (OLM) modulates and balances the classification heads
    only. Targets are then a dict `{"label": class ids, "valence":
    values}` (arrays, or a dataset yielding such dicts), checked for
    missing or unknown keys and non-finite values; `fit` logs
    `valence_mse` and `valence_mae` (and `val_...`). Calling the model (and
    `predict`) then returns a dict `{"label": (batch, num_classes)
    probabilities, "valence": (batch, 1)}`; without regression heads it
    returns the probabilities alone, as before.

    Args:
        encoders: dict from modality name to a Keras layer or model. Inputs
            are dicts with the same keys. Encoders may return vectors,
            sequences or feature maps (late fusion averages all but the
            last axis).
        num_classes: int. Number of classes.
        fusion: a fusion layer, or `None` for `LateFusion("concat")`. A
            fusion layer maps the dict of encoder outputs to a dict with one
            feature per modality and one under `"fused"`.
        balancer: a `keras_olm.balancers.Balancer`, `"olm"` for `OLM()`
            with its defaults, `"heads"` for every head's cross-entropy
            without modulation, or `None` for plain joint training (the
            fused head's loss only; unimodal heads become linear probes on
            detached features). Defaults to `"olm"`.
        regression_targets: dict from target name to its width, a list of
            names (width 1 each), or `None` for a classifier only. Each
            target gets a linear regression head on the fused feature.
            Names must differ from `"label"`. Defaults to `None`.
        regression_weight: float. Weight of the regression heads' mean
            squared errors in the training loss. Defaults to `1.0`.
        **kwargs: passed to `keras.Model`.

    Example:
    ```python
    encoders = {
        "audio": keras.Sequential([keras.layers.Dense(32, "relu")]),
        "visual": keras.Sequential([keras.layers.Dense(32, "relu")]),
    }
    model = keras_olm.BalancedMultimodalModel(encoders, num_classes=6)
    model.compile(optimizer="adam")
    model.fit({"audio": xa, "visual": xv}, y, epochs=10)  # 10% held out
    probs = model.predict({"audio": xa, "visual": xv})     # (n, 6)

    # With a valence regression head (MER-MULTI):
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, regression_targets={"valence": 1}
    )
    model.compile(optimizer="adam")
    model.fit(x, {"label": y, "valence": v}, epochs=10)  # logs valence_mse
    out = model.predict(x)  # {"label": (n, 6), "valence": (n, 1)}
    ```
    """

    def __init__(
        self,
        encoders,
        num_classes,
        fusion=None,
        balancer="olm",
        regression_targets=None,
        regression_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(encoders, dict) or len(encoders) < 1:
            raise ValueError(
                "encoders must be a non-empty dict from modality name to a "
                f"Keras layer; got {type(encoders).__name__}."
            )
        for name, encoder in encoders.items():
            if name == FUSED:
                raise ValueError(
                    f"'{FUSED}' is the fused head's name; rename that modality."
                )
            if not isinstance(encoder, keras.layers.Layer):
                raise TypeError(
                    f"The encoder of modality '{name}' must be a Keras "
                    f"layer or model; got {type(encoder).__name__}."
                )
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        self.modalities = list(encoders)
        self.encoders = dict(encoders)
        self.num_classes = int(num_classes)
        self.fusion = fusion if fusion is not None else LateFusion("concat")
        self.balancer = _resolve_balancer(balancer)
        self.head_names = self.modalities + [FUSED]
        self.balancer.build_heads(self.head_names, self.num_classes)
        self.heads = {
            h: self.balancer.make_head(h, self.num_classes)
            for h in self.head_names
        }
        self.head_loss_trackers = [
            keras.metrics.Mean(name=f"{h}_loss") for h in self.head_names
        ]
        self.head_accuracies = [
            keras.metrics.SparseCategoricalAccuracy(name=f"{h}_acc")
            for h in self.head_names
        ]
        self.regression_targets = _resolve_regression_targets(
            regression_targets
        )
        regression_weight = float(regression_weight)
        if not math.isfinite(regression_weight) or regression_weight < 0:
            raise ValueError(
                "regression_weight must be a finite number >= 0; got "
                f"{regression_weight}."
            )
        self.regression_weight = regression_weight
        self.regression_heads = {
            name: keras.layers.Dense(width, name=f"{name}_regression")
            for name, width in self.regression_targets.items()
        }
        self.regression_mse = [
            keras.metrics.MeanSquaredError(name=f"{name}_mse")
            for name in self.regression_targets
        ]
        self.regression_mae = [
            keras.metrics.MeanAbsoluteError(name=f"{name}_mae")
            for name in self.regression_targets
        ]
        self._gradient_groups = None

    # --- forward -----------------------------------------------------------

    def build(self, input_shape):
        if not isinstance(input_shape, dict):
            raise ValueError(
                "BalancedMultimodalModel inputs are dicts from modality name "
                f"to tensor; got input shape {input_shape}."
            )
        inputs_lib.check_modalities(input_shape, self.modalities, "build")
        symbolic = {
            m: keras.KerasTensor(tuple(input_shape[m])) for m in self.modalities
        }
        _, features = self._forward_with_features(symbolic, training=False)
        self._regress(features)
        self.built = True

    def _check_inputs(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError(
                "BalancedMultimodalModel inputs must be a dict from modality "
                f"name to tensor; got {type(inputs).__name__}."
            )
        inputs_lib.check_modalities(inputs.keys(), self.modalities, "inputs")
        sizes = {m: inputs[m].shape[0] for m in self.modalities}
        known = {m: s for m, s in sizes.items() if s is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                "inputs: every modality must have the same batch size; got "
                f"{known}."
            )

    def _forward(self, inputs, training=False):
        """Raw logits of every head, as a dict."""
        return self._forward_with_features(inputs, training)[0]

    def _forward_with_features(self, inputs, training=False):
        """Raw logits of every head and the features the heads read."""
        self._check_inputs(inputs)
        encoded = {
            m: self.encoders[m](inputs[m], training=training)
            for m in self.modalities
        }
        features = self.fusion(encoded, training=training)
        logits = {}
        for m in self.modalities:
            f = features[m]
            if self.balancer.detach_unimodal_heads:
                f = ops.stop_gradient(f)
            logits[m] = self.heads[m](f)
        logits[FUSED] = self.heads[FUSED](features[FUSED])
        return logits, features

    def _regress(self, features):
        """Regression heads' predictions on the fused feature, as a dict."""
        return {
            name: head(features[FUSED])
            for name, head in self.regression_heads.items()
        }

    def call(self, inputs, training=False):
        logits, features = self._forward_with_features(inputs, training)
        probs = ops.softmax(logits[FUSED], axis=-1)
        if not self.regression_heads:
            return probs
        return {inputs_lib.LABEL: probs, **self._regress(features)}

    def head_logits(self, inputs, training=False):
        """Raw (unmodulated) logits of every head.

        Args:
            inputs: dict from modality name to a batch.
            training: bool. Defaults to `False`.

        Returns:
            A dict from head name (the modalities and `"fused"`) to logits
            of shape `(batch, num_classes)`.
        """
        return self._forward(inputs, training=training)

    def predict_heads(self, x, batch_size=256):
        """Raw logits of every head for arrays or a dataset, as numpy.

        Args:
            x: dict of arrays, or a `tf.data.Dataset` of `(inputs, ...)`
                batches.
            batch_size: int. Batch size for array inputs. Defaults to 256.

        Returns:
            A dict from head name to a numpy array `(n, num_classes)`.
        """
        if isinstance(x, dict):
            n = len(next(iter(x.values())))
            batches = (
                {m: np.asarray(v[i : i + batch_size]) for m, v in x.items()}
                for i in range(0, n, batch_size)
            )
        else:
            batches = (
                e[0] if isinstance(e, tuple) else e
                for e in x.as_numpy_iterator()
            )
        out = {h: [] for h in self.head_names}
        for batch in batches:
            logits = self.head_logits(batch)
            for h in self.head_names:
                out[h].append(ops.convert_to_numpy(logits[h]))
        return {h: np.concatenate(v) for h, v in out.items()}

    # --- training (shared by the backend trainers) -------------------------

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """Configures the model for training.

        Args:
            optimizer: the model's optimizer. Defaults to `"adam"`.
            loss: must be `None`: the balancer defines the loss.
            **kwargs: passed to `keras.Model.compile` (e.g. `metrics` on the
                fused probabilities, `jit_compile`).
        """
        if loss is not None:
            raise ValueError(
                "BalancedMultimodalModel computes every head's loss through "
                "its balancer; do not pass `loss` to compile()."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def _unpack(self, data):
        """Splits a batch into `(x, y, sample_weight, dev)`."""
        if isinstance(data, list):
            data = tuple(data)
        if not isinstance(data, tuple) or len(data) < 2:
            raise ValueError(
                "Training batches must be (inputs, labels[, sample_weight])."
            )
        x, y = data[0], data[1]
        third = data[2] if len(data) > 2 else None
        dev = None
        sample_weight = third
        if isinstance(third, dict):
            sample_weight = third.get("sample_weight")
            if "dev_x" in third:
                # No flag: a held-out batch fed from the host, read on
                # every step that carries one.
                dev = (third["dev_x"], third["dev_y"], third.get("dev_flag"))
        return x, y, sample_weight, dev

    def _labels(self, y):
        if isinstance(y, dict):
            y = y[inputs_lib.LABEL]
        y = ops.convert_to_tensor(y)
        if len(y.shape) > 1:
            y = ops.reshape(y, (-1,))
        return ops.cast(y, "int32")

    def _loss_and_logits(self, x, y, sample_weight, training=True):
        """Forward pass and loss; what the trainers differentiate."""
        logits, features = self._forward_with_features(x, training=training)
        total, head_losses = self.balancer.compute_loss(
            self._labels(y), logits, sample_weight, features=features
        )
        predictions = self._regress(features)
        if predictions:
            targets = self._regression_values(y)
            regression_loss = sum(
                _squared_error(targets[n], predictions[n], sample_weight)
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
        # heads (fewer ops to dispatch than one per head).
        stacked = ops.stack([logits[h] for h in self.head_names])
        labels = ops.broadcast_to(y, ops.shape(stacked)[:-1])
        per_sample = keras.losses.sparse_categorical_crossentropy(
            labels, stacked, from_logits=True
        )
        return ops.mean(per_sample, axis=-1)

    def _dev_losses(self, dev):
        """Per-head losses on the held-out batch, only where its flag is 1."""
        zeros = ops.zeros((len(self.head_names),))
        if dev is None or not self.balancer.needs_dev_data:
            return zeros, ops.zeros(())
        dev_x, dev_y, flag = dev

        def measure():
            logits = self._forward(dev_x, training=False)
            return ops.stop_gradient(self._raw_head_losses(dev_y, logits))

        if flag is None:
            # Fed from the host, which adds held-out batches only to the
            # steps that read them: nothing to branch on.
            return measure(), ops.ones(())
        return ops.cond(flag > 0, measure, lambda: zeros), flag

    def _gradient_groups_by_modality(self):
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
        """Balancer gradient hook.

        Returns:
            `(grads, finite, aux)`: the gradients to apply, whether the
            step's loss was finite and the step's `aux`, detached (what
            `_after_train_step` takes). Trainers skip the optimizer step
            when the loss was not finite (`_apply_if_finite`), so a NaN
            step moves no weight and no optimizer moment.
        """
        aux = _detached(aux)
        logits, head_losses, features, _ = aux
        finite = ops.all(ops.isfinite(total))
        step = StepMeasurements(
            self._labels(y),
            logits,
            head_losses,
            None,
            None,
            finite,
            features=features,
        )
        grads = self.balancer.transform_gradients(
            grads,
            self.trainable_variables,
            self._gradient_groups_by_modality(),
            step,
        )
        return grads, finite, aux

    def _apply_if_finite(self, finite, grads, variables):
        """`optimizer.apply`, skipped on a step with a non-finite loss.

        A branch, as Keras' `LossScaleOptimizer` does, rather than zeroing
        every gradient with `where`: that was a full pass over the weights
        per step (plain training of the overhead benchmark's MLP: 18% of
        the step under torch, 11% on TensorFlow), and zero gradients still
        moved the weights through Adam's momentum.
        """

        def apply():
            self.optimizer.apply(grads, variables)

        ops.cond(finite, apply, lambda: None)

    def _after_train_step(self, y, sample_weight, total, aux, dev_out, finite):
        """Balancer update and metrics after the optimizer step.

        Args:
            aux: the step's detached `aux`, as `_transform_gradients`
                returns it.
            finite: whether the total loss was finite, as
                `_transform_gradients` returns it.
        """
        logits, head_losses, features, predictions = aux
        dev_losses, dev_flag = dev_out
        targets = y
        y = self._labels(y)
        if self.balancer.measures_steps:
            # A non-finite head or held-out loss must not enter the
            # balancer either.
            measured = ops.concatenate([head_losses, dev_losses])
            finite = ops.logical_and(finite, ops.all(ops.isfinite(measured)))
            if not self.balancer.update_reads_features:
                # Not passed: on TensorFlow the update is a separate XLA
                # cluster and its inputs are copied into it.
                features = None
            self._update_balancer(
                y, logits, dev_losses, dev_flag, finite, features
            )
        return self._update_metrics(
            targets,
            sample_weight,
            ops.stop_gradient(total),
            logits,
            head_losses,
            predictions,
        )

    def _balancer_update_fn(
        self, y, logits, dev_losses, dev_flag, finite, features
    ):
        """The balancer's state update from one step's measurements."""
        raw = self._raw_head_losses(y, logits)
        self.balancer.update(
            StepMeasurements(
                y, logits, raw, dev_losses, dev_flag, finite, features=features
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
        logs.update(self.balancer.step_logs())
        return logs

    def _test_logs(self, x, y, sample_weight):
        total, (logits, head_losses, _, predictions) = self._loss_and_logits(
            x, y, sample_weight, training=False
        )
        return self._update_metrics(
            y, sample_weight, total, logits, head_losses, predictions
        )

    # --- fit ---------------------------------------------------------------

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        callbacks=None,
        validation_data=None,
        shuffle=True,
        sample_weight=None,
        dev_data=None,
        dev_split=0.1,
        dev_seed=0,
        **kwargs,
    ):
        """Trains the model; see `keras.Model.fit` for the common arguments.

        Inputs are checked before any step runs: input keys must match the
        encoders', every modality must have the labels' batch size, and
        labels must lie in `[0, num_classes)`.

        Args:
            x: dict of arrays, or a `tf.data.Dataset` of
                `(inputs, labels[, sample_weight])` batches.
            y: labels for array inputs; with regression heads a dict
                `{"label": class ids, <target>: values}` (datasets then
                yield such dicts too).
            batch_size: int. For array inputs. Defaults to 32.
            dev_data: held-out data for balancers that measure held-out
                losses (OLM): a batched `tf.data.Dataset` or an
                `(inputs, labels)` tuple of arrays. It must be split from
                the training data, never the test set (and by default not
                the validation set that picks checkpoints).
                `keras_olm.holdout_split` makes one from a dataset.
            dev_split: float. With array inputs and no `dev_data`, this
                fraction of the training arrays is held out (by a seeded
                permutation) for the held-out losses. Defaults to `0.1`.
            dev_seed: int. Seed of that split. Defaults to `0`.
            validation_data: as in Keras: `(inputs, labels)` arrays or a
                dataset; evaluated with `val_` logs, never used by OLM.
            **kwargs: passed to `keras.Model.fit`.

        Returns:
            The `History` object.
        """
        import tensorflow as tf

        needs_dev = self.balancer.needs_dev_data
        arrays = isinstance(x, dict)
        batch_size = batch_size or 32
        if arrays:
            if y is None:
                raise ValueError("fit: labels `y` are required with arrays.")
            inputs_lib.check_arrays(
                x,
                y,
                self.modalities,
                self.num_classes,
                "fit",
                self.regression_targets,
            )
            y = inputs_lib.normalize_targets(y, self.regression_targets, "fit")
            if needs_dev and dev_data is None:
                (x, y, sample_weight), dev_data = inputs_lib.split_arrays(
                    x, y, sample_weight, dev_split, dev_seed
                )
            train = inputs_lib.arrays_to_dataset(
                x, y, sample_weight, batch_size, shuffle, dev_seed
            )
        elif isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError(
                    "fit: with a dataset, labels and sample weights come "
                    "from the dataset; do not pass `y` or `sample_weight`."
                )
            train = inputs_lib.check_dataset(
                x,
                self.modalities,
                self.num_classes,
                "fit",
                self.regression_targets,
            )
        else:
            raise TypeError(
                "fit: x must be a dict of arrays or a tf.data.Dataset; got "
                f"{type(x).__name__}."
            )
        if needs_dev:
            if dev_data is None:
                raise ValueError(
                    f"{type(self.balancer).__name__} measures losses on "
                    "held-out training data: pass fit(..., dev_data=...), "
                    "e.g. from `keras_olm.holdout_split(unbatched_ds, 0.1)` "
                    "(a split of the training data, never the test set)."
                )
            dev = self._as_dataset(dev_data, batch_size, "dev_data")
            every = (
                1
                if self.balancer.dev_schedule == "step"
                else (self.balancer.dev_every)
            )
            train = self._attach_dev_data(train, dev, every)
        if validation_data is not None:
            validation_data = self._as_dataset(
                validation_data, batch_size, "validation_data"
            )
        if not self.built:
            spec = train.element_spec[0]
            self.build({m: (None, *spec[m].shape[1:]) for m in spec})
        callbacks = list(callbacks or [])
        callbacks.append(_NonFiniteGuard(self.head_names))
        try:
            return super().fit(
                train,
                epochs=epochs,
                callbacks=callbacks,
                validation_data=validation_data,
                shuffle=False,  # array inputs were shuffled by the pipeline
                **kwargs,
            )
        except BaseException:
            # Keep what the finished steps trained (JAX holds it apart
            # from the variables during an epoch).
            self._sync_training_state()
            raise

    def _as_dataset(self, data, batch_size, where):
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            return inputs_lib.check_dataset(
                data,
                self.modalities,
                self.num_classes,
                where,
                self.regression_targets,
            )
        if isinstance(data, (tuple, list)) and len(data) in (2, 3):
            x, y = data[0], data[1]
            inputs_lib.check_arrays(
                x,
                y,
                self.modalities,
                self.num_classes,
                where,
                self.regression_targets,
            )
            y = inputs_lib.normalize_targets(y, self.regression_targets, where)
            sw = data[2] if len(data) == 3 else None
            n = len(data[0][self.modalities[0]])
            return inputs_lib.arrays_to_dataset(
                x, y, sw, min(batch_size, n), False, 0
            )
        raise TypeError(
            f"{where} must be a tf.data.Dataset or an (inputs, labels) "
            f"tuple; got {type(data).__name__}."
        )

    # --- serialization -----------------------------------------------------

    def get_build_config(self):
        config = super().get_build_config()
        if config and "input_shape" in config:
            shapes = config["input_shape"]
            config["input_shape"] = {
                m: (None, *tuple(s)[1:]) for m, s in shapes.items()
            }
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoders={
                m: keras.saving.serialize_keras_object(e)
                for m, e in self.encoders.items()
            },
            num_classes=self.num_classes,
            fusion=keras.saving.serialize_keras_object(self.fusion),
            balancer=keras.saving.serialize_keras_object(self.balancer),
            regression_targets=dict(self.regression_targets) or None,
            regression_weight=self.regression_weight,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoders"] = {
            m: keras.saving.deserialize_keras_object(e)
            for m, e in config["encoders"].items()
        }
        config["fusion"] = keras.saving.deserialize_keras_object(
            config["fusion"]
        )
        config["balancer"] = keras.saving.deserialize_keras_object(
            config["balancer"]
        )
        return cls(**config)


def _detached(aux):
    """Detached `(logits, head_losses, features, regression)` of a step."""
    logits, head_losses, features, predictions = aux
    return (
        {h: ops.stop_gradient(v) for h, v in logits.items()},
        ops.stop_gradient(head_losses),
        {m: ops.stop_gradient(v) for m, v in features.items()},
        {n: ops.stop_gradient(v) for n, v in predictions.items()},
    )


class _NonFiniteGuard(keras.callbacks.Callback):
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
