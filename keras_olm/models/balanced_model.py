"""`BalancedMultimodalModel`: encoders, a fusion layer, heads, a balancer.

The model holds what a Keras model is (its layers, `call`, its config);
its input checks are `keras_olm.input_plan`'s, its training and test steps
`keras_olm.trainers`' (the shared step in `trainers/step.py` and one short
trainer per backend), and held-out batches for the balancer are
`keras_olm.held_out`'s.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_olm import balancers as balancers_lib
from keras_olm.balancers.base import Balancer
from keras_olm.balancers.base import JointTraining
from keras_olm.batch_checks import clear_errors
from keras_olm.held_out import FitInputs
from keras_olm.input_plan import InputPlan
from keras_olm.input_plan import check_encoders
from keras_olm.inputs import LABEL
from keras_olm.layers.base import FUSED
from keras_olm.layers.fusion import LateFusion
from keras_olm.models.saving import SavingMixin
from keras_olm.trainers import StepMixin
from keras_olm.trainers.callbacks import LogOrder
from keras_olm.trainers.callbacks import NonFiniteGuard
from keras_olm.trainers.resume import MidEpochResume
from keras_olm.trainers.state import NonFiniteLossError
from keras_olm.trainers.state import TrainingState
from keras_olm.trainers.state import raise_if_faulted


class _HeadLogits(keras.Model):
    """`model.head_logits` as a model, for Keras' `predict` loop."""

    def __init__(self, model):
        super().__init__(name=f"{model.name}_head_logits")
        self.model = model
        self.built = True

    def call(self, inputs, training=False):
        return self.model.head_logits(inputs, training=training)


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


def _shuffled(fit_inputs):
    """Whether Keras shuffles the training inputs (arrays only)."""
    arrays = isinstance(fit_inputs.x, (dict, list, tuple, np.ndarray))
    return bool(fit_inputs.shuffle) and arrays


@keras.saving.register_keras_serializable(package="keras_olm")
class BalancedMultimodalModel(SavingMixin, StepMixin, keras.Model):
    """A multimodal classifier trained with a modality balancer.

    Every modality m has an encoder and its own linear head, and a fusion
    layer joins the encoder outputs for a fused head (Eq. 5 of Zong et al.,
    2024): with M modalities there are M + 1 heads, named after the
    modalities plus `"fused"`. The balancer decides how the heads' losses
    train the model; the default, `OLM()`, trains every head on its own loss
    and stops each modality head once its held-out loss stops improving.

    Calling the model returns the fused head's class probabilities, so
    `predict` gives `(batch, num_classes)` probabilities. The raw logits of
    every head come from `head_logits` (tensors) or `predict_heads` (numpy).
    OLM's coefficients play no part at inference, as in the paper: they
    only scale the logits inside the training loss.

    `fit` reports the total loss, each head's loss and accuracy (e.g.
    `audio_loss`, `audio_acc`, `fused_acc`) and, for OLM, each head's
    coefficient and λ (`audio_coef`, `audio_lambda`), and the same with
    `val_` for validation data.

    Regression heads (optional, e.g. MER-MULTI's valence): with
    `regression_targets={"valence": 1}` a linear layer on the fused feature
    predicts each target (there are no unimodal regression heads; a
    one-modality model's fused feature is that modality's, so it gives the
    unimodal regression baseline). Their mean squared errors, times
    `regression_weight`, are added to the balancer's loss: the balancer
    (OLM) modulates and balances the classification heads only. Targets
    are then a dict `{"label": class ids, "valence": values}` (arrays, or a
    dataset yielding such dicts), checked for missing or unknown keys and
    non-finite values; `fit` logs `valence_mse` and `valence_mae` (and
    `val_...`). Calling the model (and `predict`) then returns a dict
    `{"label": (batch, num_classes) probabilities, "valence": (batch, 1)}`;
    without regression heads it returns the probabilities alone.

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
            with its defaults (the paper's logit modulation with head
            stopping), `"heads"` for every head's cross-entropy
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

    _head_logits_model = None

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
        check_encoders(encoders, num_classes)
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
        self.training_state = TrainingState(
            len(self.fault_names()), name="training_state"
        )
        self.head_loss_trackers = [
            keras.metrics.Mean(name=f"{h}_loss") for h in self.head_names
        ]
        self.head_accuracies = [
            keras.metrics.SparseCategoricalAccuracy(name=f"{h}_acc")
            for h in self.head_names
        ]
        self.input_plan = InputPlan(
            self.modalities,
            self.num_classes,
            regression_targets,
            encoders=self.encoders,
            built_shapes=self._built_input_shapes,
        )
        self.regression_targets = self.input_plan.regression_targets
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

    # --- forward -----------------------------------------------------------

    def build(self, input_shape):
        self.input_plan.check_build_shape(input_shape)
        symbolic = {
            m: keras.KerasTensor(tuple(input_shape[m])) for m in self.modalities
        }
        _, features = self._forward_with_features(symbolic, training=False)
        self._regress(features)
        self.built = True
        self(symbolic)  # once, symbolically, as Keras' `export` asks

    def _forward(self, inputs, training=False):
        """Raw logits of every head, as a dict."""
        return self._forward_with_features(inputs, training)[0]

    def _forward_with_features(self, inputs, training=False):
        """Raw logits of every head and the features the heads read."""
        self.input_plan.check_call_inputs(inputs)
        encoded = {
            m: self.encoders[m](inputs[m], training=training)
            for m in self.modalities
        }
        features = self.fusion(encoded, training=training)
        logits = {}
        gates = self.balancer.unimodal_gradient_gates()
        for i, m in enumerate(self.modalities):
            f = features[m]
            if self.balancer.detach_unimodal_heads:
                f = ops.stop_gradient(f)
            elif gates is not None:
                # Same value as f (f - f is exactly 0); gradient gates[i].
                detached = ops.stop_gradient(f)
                f = detached + (f - detached) * ops.cast(gates[i], f.dtype)
            logits[m] = self.heads[m](f)
        logits[FUSED] = self.heads[FUSED](
            self.balancer.fused_head_input(features, logits)
        )
        # Losses, balancer measurements and probabilities in float32 under
        # a mixed-precision policy (as Keras asks of a model's outputs).
        logits = {h: ops.cast(v, "float32") for h, v in logits.items()}
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
        return {LABEL: probs, **self._regress(features)}

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

    def predict_heads(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None
    ):
        """Raw logits of every head, as numpy; `predict`'s arguments.

        Args:
            x: inputs in any form `predict` takes (a dict of arrays, a list
                of arrays in the encoders' order, a dataset, a `PyDataset`,
                a generator, a torch `DataLoader`); labels in the batches
                are ignored.
            batch_size: int or `None`. For array inputs. Defaults to 32.
            verbose: `"auto"`, 0, 1 or 2, as in `predict`.
            steps: int or `None`. Number of batches, as in `predict`.
            callbacks: list of `keras.callbacks.Callback`, as in `predict`.

        Returns:
            A dict from head name to a numpy array `(n, num_classes)`.
        """
        if self._head_logits_model is None:
            # Kept out of Keras' layer tracking: the wrapper holds this
            # model, not the other way round.
            self.__dict__["_head_logits_model"] = _HeadLogits(self)
        x = self.input_plan.for_predict(x, "predict_heads")
        logits = self._head_logits_model.predict(
            x,
            batch_size=batch_size,
            verbose=verbose,
            steps=steps,
            callbacks=callbacks,
        )
        return {h: logits[h] for h in self.head_names}

    # --- training ---------------------------------------------------------

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

    # --- fit ---------------------------------------------------------------

    @clear_errors
    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        class_weight=None,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_steps=None,
        validation_batch_size=None,
        validation_freq=1,
        held_out_data=None,
        held_out_split=0.1,
        held_out_seed=0,
    ):
        """Trains the model; the arguments are `keras.Model.fit`'s, plus
        the held-out data of balancers that read held-out losses (OLM).

        `x` takes what Keras' `fit` takes: a dict of arrays keyed like the
        encoders (or a list of arrays in the encoders' order) with labels
        `y`, a `tf.data.Dataset`, a `keras.utils.PyDataset`, a generator or
        (torch backend) a torch `DataLoader` of `(inputs, labels[,
        sample_weight])` batches. `validation_split` (arrays only: the last
        fraction, before shuffling, as Keras), `validation_data`,
        `class_weight`, `sample_weight`, `initial_epoch` and `steps_per_epoch`
        work as in Keras.

        Inputs are checked (`keras_olm.batch_checks`): arrays before any
        step, other forms batch by batch as read. Keys match the encoders',
        modalities and labels have one batch size, labels are class ids in
        `[0, num_classes)`, sample weights finite and non-negative, built
        encoders take each modality's shape; validation and held-out inputs
        must be finite (held-out data: all, in a pass before any step).
        The arguments not listed below are those of `keras.Model.fit`.

        Args:
            y: labels for array inputs; with regression heads a dict
                `{"label": class ids, <target>: values}` (datasets then
                yield such dicts too).
            held_out_data: held-out data for balancers that measure
                held-out losses (OLM, G-Blend), in any form `x` takes (with
                arrays: an `(inputs, labels)` tuple). It must be split from
                the training data, never the test set (and by default not
                the validation set that picks checkpoints).
                `keras_olm.split_held_out` makes one from a dataset.
            held_out_split: float. With array inputs and no
                `held_out_data`, this fraction of the training arrays (after
                `validation_split`) is held out by a seeded permutation for
                the held-out losses, and not trained on; `fit` says so in
                one line. Defaults to `0.1`.
            held_out_seed: int. Seed of that split. Defaults to `0`.

        Returns:
            The `History` object.
        """
        plan = self.input_plan.for_fit(
            FitInputs(x, y, sample_weight, batch_size, shuffle, class_weight),
            validation_split=validation_split,
            validation_data=validation_data,
            held_out_data=held_out_data,
            held_out_split=held_out_split,
            held_out_seed=held_out_seed,
            balancer=self.balancer,
            verbose=verbose,
        )
        if not self.built and plan.build_shapes is not None:
            with self._build_scope():
                self.build(plan.build_shapes)
        if self.built and self.optimizer and not self.optimizer.built:
            # Built before TensorFlow traces a step, which it would trace
            # twice if the step made the optimizer's variables.
            with self._build_scope():
                self.optimizer.build(self.trainable_variables)
        plan = self.input_plan.finish_fit(plan)
        fit_inputs = plan.fit_inputs
        if plan.held_out is not None:
            fit_inputs = self._attach_held_out(
                fit_inputs, plan.held_out, self.balancer.held_out_period
            )
        callbacks = [
            NonFiniteGuard(self.fault_names()),
            LogOrder(self.modalities, self.regression_targets),
            *(callbacks or []),
        ]
        callbacks.append(MidEpochResume(callbacks, _shuffled(fit_inputs)))
        self.training_state.reset_faults()
        try:
            with self._fit_scope(fit_inputs.x):
                return super().fit(
                    fit_inputs.x,
                    fit_inputs.y,
                    batch_size=fit_inputs.batch_size,
                    epochs=epochs,
                    verbose=verbose,
                    callbacks=callbacks,
                    validation_split=plan.validation_split,
                    validation_data=plan.validation_data,
                    shuffle=fit_inputs.shuffle,
                    class_weight=fit_inputs.class_weight,
                    sample_weight=fit_inputs.sample_weight,
                    initial_epoch=initial_epoch,
                    steps_per_epoch=steps_per_epoch,
                    validation_steps=validation_steps,
                    validation_batch_size=validation_batch_size,
                    validation_freq=validation_freq,
                )
        except BaseException:
            # Keep what the finished steps trained (JAX holds it apart
            # from the variables during an epoch).
            self._sync_training_state()
            raise
        finally:
            self._held_out_feed = None

    @clear_errors
    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; inputs also as a list of arrays in the
        encoders' order. Returns the metrics in `metrics_names` order."""
        if not kwargs.get("_use_cached_eval_dataset"):
            # (fit's validation passes were checked when fit began)
            sw = kwargs.get("sample_weight")
            x, y = self.input_plan.for_evaluate(x, y, "evaluate", sw)
        return super().evaluate(x, y, *args, **kwargs)

    @clear_errors
    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; inputs also as a list of arrays in the
        encoders' order."""
        x = self.input_plan.for_predict(x, "predict")
        return super().predict(x, *args, **kwargs)

    def train_on_batch(
        self,
        x,
        y=None,
        sample_weight=None,
        class_weight=None,
        return_dict=False,
    ):
        """`keras.Model.train_on_batch`; a step that was not finite raises
        `NonFiniteLossError` (nothing of it is applied), as in `fit`."""
        logs = super().train_on_batch(
            x,
            y,
            sample_weight=sample_weight,
            class_weight=class_weight,
            return_dict=True,
        )
        try:
            raise_if_faulted(
                logs,
                self.fault_names(),
                lambda step: f"global step {step} (train_on_batch)",
            )
        except NonFiniteLossError:
            # The next call starts clean, as the next `fit` does.
            self.training_state.reset_faults()
            raise
        if return_dict:
            return logs
        return self._flatten_metrics_in_order(logs)

    def _built_input_shapes(self):
        """The input shapes the model was built with, or `None`."""
        config = self.get_build_config() if self.built else None
        return (config or {}).get("input_shape")

    # --- serialization -----------------------------------------------------

    def get_build_config(self):
        config = super().get_build_config()
        if config and "input_shape" in config:
            shapes = config["input_shape"]
            config["input_shape"] = {
                m: (None, *tuple(s)[1:]) for m, s in shapes.items()
            }
        return config

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
