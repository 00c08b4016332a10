"""The balancer interface shared by OLM and the field's other methods.

A balancer is a small Keras layer that owns its own state (non-trainable
variables) and exposes a handful of hooks that the training step calls at
fixed points. The shape follows optax's transformations: every balancer
has the same hooks, all of them default to "do nothing", state changes
are returned rather than assigned, and the base class applies them,
guarded against non-finite steps once for every balancer (as optax's
`apply_if_finite` wraps any transformation).

The hooks, in the order a training step calls them:

1. `make_head(name, num_classes)`: build the classifier of one head
   (MMCosine-style balancers replace the linear head).
2. `detach_unimodal_heads`: whether the unimodal heads read detached
   features (then they are linear probes that cannot train the encoders);
   `unimodal_gradient_gates()`: a factor in [0, 1] per modality on the
   gradient each unimodal head sends into its encoder (head stopping);
   the forward values are unchanged.
3. `modulate(logits)`: map raw per-head logits to the logits the loss
   sees (OLM multiplies each head by its coefficient).
4. `compute_loss(y, logits, sample_weight, features)`: the training loss
   and the per-head losses (G-Blend and GradNorm reweight them, PMR adds
   terms). It sees one replica's or process' share of the batch; a sum
   over the batch that weighs the loss goes through
   `common.replica_sum` (PMR's prototype scores).
5. `transform_gradients(grads, variables, groups, step)`: rescale
   gradients per modality (OGM-GE); returns the gradients and the
   balancer's new state. A balancer that overrides it declares
   `transforms_gradients = True`.
6. `state_update(step)`: the balancer's new state from what the step
   measured: its own `update` (OLM's coefficients, G-Blend's weights)
   and its head stopping's, composed.
7. `step_logs()`: scalars shown in the progress bar and `History`.

Two more hooks shape the forward pass and what the step measures:
`fused_head_input(features, logits)` says what the fused head reads (the
fusion layer's fused feature, or MLA's per-modality logits), and
`head_gradients` names the heads whose own loss gradients the step takes
apart from the total's (MMPareto's multimodal gradient); the gradient
hook also gets `StepRecord.forward`, which runs the model on altered
inputs (AGM's Shapley mono scores).

Head stopping (`HeadStopping`) is a part that every balancer whose
unimodal heads train their encoders takes (`head_stopping=`): the base
class builds it, reads held-out losses for it, composes its update with
the balancer's own, gates the unimodal heads with it and logs the gates.

The training step runs 5 and 6 before the optimizer step, on the
forward pass's measurements, checks their new state with the loss and
the gradients, and assigns it only if all of it is finite
(`assign_if_finite`); `apply_transform_gradients` and `apply_update` do
the same for one hook on its own.
"""

import dataclasses
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_olm.balancers.common import HeadLayers
from keras_olm.balancers.common import check_choice
from keras_olm.balancers.common import cross_entropy
from keras_olm.balancers.head_stopping import HeadStopping
from keras_olm.layers.base import FUSED

#: The key under which a balancer's entry of a weights file names the
#: balancer that wrote it.
BALANCER_KEY = "balancer"


def encode_name(name):
    """A balancer's registered name as the uint8 array a weights file
    stores (Keras' stores hold numeric arrays)."""
    return np.frombuffer(name.encode("utf-8"), dtype="uint8").copy()


def decode_name(array):
    """The name `encode_name` stored."""
    return bytes(np.asarray(array, dtype="uint8")).decode("utf-8")


#: Where a balancer that reads held-out losses gets them: `"periodic"`,
#: one held-out batch every `held_out_every` steps, or `"step"`, one every
#: step.
HELD_OUT_SCHEDULES = ("periodic", "step")


@keras.saving.register_keras_serializable(package="keras_olm")
@dataclasses.dataclass(frozen=True)
class HeldOutSchedule:
    """When a balancer that reads held-out losses gets a held-out batch.

    Args:
        schedule: str. `"periodic"`: one held-out batch every `every`
            steps (steps 0, k, 2k, ... of each `fit` call; the batches
            between carry no held-out data and cost nothing). `"step"`:
            one held-out batch every step, as OLM's authors do (one extra
            forward pass per step). Defaults to `"periodic"`.
        every: int >= 1. The period of the `"periodic"` schedule, in
            steps. Defaults to `20`.
    """

    schedule: str = "periodic"
    every: int = 20

    def __post_init__(self):
        check_choice("held_out_schedule", self.schedule, HELD_OUT_SCHEDULES)
        if int(self.every) < 1:
            raise ValueError(f"held_out_every must be >= 1; got {self.every}")
        object.__setattr__(self, "every", int(self.every))

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepRecord:
    """What one training step measured, as the balancer hooks see it.

    Every field is detached from the gradient.

    Args:
        y: int tensor `(batch,)`. The batch labels.
        logits: dict from head name to the raw (unmodulated) logits
            `(batch, num_classes)`.
        finite: bool scalar (tensor). Read by `apply_update` and
            `apply_transform_gradients`, which drop the new state where it
            is False. Defaults to `True`: the training step checks the
            loss, the gradients and the new state itself, after the hooks,
            and assigns nothing of a step that was not finite.
        head_losses: tensor `(num_heads,)` or `None`. Every head's
            cross-entropy on its raw logits, in `head_names` order.
            Measured on this step's forward pass, before the optimizer
            step, for `update`; `None` in `transform_gradients`.
        held_out_losses: tensor `(num_heads,)` or `None`. Every head's
            cross-entropy on a held-out batch; meaningful only where
            `held_out_flag` is 1. `None` in `transform_gradients`.
        held_out_flag: float scalar tensor or `None`. 1 when this step
            measured a held-out batch, else 0.
        features: dict or `None`. The features each head read (the fusion
            layer's outputs: one per modality and `"fused"`); `None` in
            `update` unless the balancer sets `update_reads_features`.
        inputs: dict or `None`. The batch's inputs, by modality; set in
            `transform_gradients` only.
        forward: callable or `None`. `forward(inputs)` runs the model
            (encoders, fusion, heads) in inference mode on a dict of inputs
            shaped as `inputs` (e.g. with one modality zeroed) and returns
            the detached raw logits of every head, as a dict. With several
            replicas it returns the global batch's logits, as `logits`
            are. Set in `transform_gradients` only.
        head_gradients: dict or `None`. For every head named in the
            balancer's `head_gradients`, the gradients of that head's loss
            alone (its entry of `compute_loss`' head losses), one per
            trainable variable (`None` where it does not reach a
            variable). Set in `transform_gradients` only.
    """

    y: Any
    logits: dict
    finite: Any = True
    head_losses: Any = None
    held_out_losses: Any = None
    held_out_flag: Any = None
    features: Any = None
    inputs: Any = None
    forward: Any = None
    head_gradients: Any = None


@keras.saving.register_keras_serializable(package="keras_olm")
class Balancer(keras.layers.Layer):
    """Base class of all balancers: per-head cross-entropy, no state.

    On its own this is the "same heads, no modulation" reference: every
    head (each modality's and the fused one) gets its own cross-entropy,
    with weight 1. Every comparison of a balancer must include it, since the
    auxiliary per-head losses alone already change training.

    Subclasses override the hooks they need (see the module docstring) and
    create their state in `build_heads`, which the model calls once with the
    head names, before any training.

    Args:
        head_stopping: `HeadStopping`, `True` for `HeadStopping()`, or
            `None`. Early stopping of each modality head's gradient into
            its encoder, on held-out losses; with it the balancer needs
            held-out data (`needs_held_out`) and its state update runs
            every step. A balancer whose modality heads have no losses
            that train their encoders (`accepts_head_stopping` false)
            raises a `ValueError`. Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, balancer=keras_olm.balancers.Balancer()
    )
    ```
    """

    #: Whether the step must feed held-out batches to `update`.
    needs_held_out = False
    #: Held-out schedule (one of `HELD_OUT_SCHEDULES`) and its period in
    #: steps, read when `needs_held_out`; see `held_out_period`.
    held_out_schedule = "periodic"
    held_out_every = 20
    #: Whether `state_update` reads the step's measurements (else it is
    #: skipped and the step does not compute them). Set on an instance
    #: given head stopping.
    measures_steps = False
    #: Whether the balancer overrides `transform_gradients`.
    transforms_gradients = False
    #: Whether the modality heads have losses that train their encoders
    #: beside the fused head's, so that `head_stopping` has a gradient to
    #: stop.
    accepts_head_stopping = True
    #: Whether `update` reads `step.features` (else they are not passed).
    update_reads_features = False
    #: Whether unimodal heads read detached features (linear probes).
    detach_unimodal_heads = False
    #: Heads whose own loss gradients the step takes, apart from the
    #: total's, for `transform_gradients` (`StepRecord.head_gradients`).
    head_gradients = ()

    def __init__(self, head_stopping=None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if isinstance(head_stopping, dict):
            head_stopping = keras.saving.deserialize_keras_object(head_stopping)
        elif head_stopping is True:
            head_stopping = HeadStopping()
        elif head_stopping is False:
            head_stopping = None
        if head_stopping is not None:
            if not isinstance(head_stopping, HeadStopping):
                raise ValueError(
                    "head_stopping must be a keras_olm.balancers."
                    f"HeadStopping or None; got {head_stopping!r}"
                )
            if not self.accepts_head_stopping:
                name = type(self).__name__
                raise ValueError(
                    f"{name} takes no head_stopping: head stopping cuts a "
                    "modality head's loss off its encoder while the fused "
                    f"head's loss trains on, and {name} has no modality "
                    "head losses beside a fused one that train the encoders."
                )
            self.needs_held_out = True
            self.measures_steps = True
        self.head_stopping = head_stopping
        self.head_names = None
        self.num_classes = None

    def build_heads(self, head_names, num_classes):
        """Records the heads and creates the balancer's state.

        Args:
            head_names: list of str. Modality heads in order, then "fused".
            num_classes: int. Number of classes.
        """
        self.head_names = list(head_names)
        self.num_classes = int(num_classes)
        if self.head_stopping is not None:
            self.head_stopping.build_heads(self.num_heads, self.held_out_period)
        self.built = True

    def set_held_out_schedule(self, schedule, every):
        """Checks and sets `held_out_schedule` and `held_out_every`."""
        check_choice("held_out_schedule", schedule, HELD_OUT_SCHEDULES)
        if int(every) < 1:
            raise ValueError(f"held_out_every must be >= 1; got {every}")
        self.held_out_schedule = schedule
        self.held_out_every = int(every)

    @property
    def held_out_period(self):
        """Steps between two held-out batches: 1 for `"step"`, else
        `held_out_every`."""
        return 1 if self.held_out_schedule == "step" else self.held_out_every

    @property
    def head_stopping_patience(self):
        """Head stopping's patience in held-out measurements of this
        balancer's schedule (`HeadStopping.patience_in_measurements`), or
        `None` without head stopping."""
        if self.head_stopping is None:
            return None
        return self.head_stopping.patience_in_measurements(self.held_out_period)

    def add_state(self, name, value=0.0, shape=None, dtype="float32"):
        """A non-trainable state variable filled with `value`.

        Args:
            name: str. The variable's name (it names the saved weight).
            value: float. Initial value. Defaults to `0.0`.
            shape: tuple or `None`. Defaults to one entry per head.
            dtype: str. Defaults to `"float32"`.
        """
        return self.add_weight(
            name=name,
            shape=(self.num_heads,) if shape is None else shape,
            initializer=keras.initializers.Constant(value),
            dtype=dtype,
            trainable=False,
        )

    @property
    def num_heads(self):
        return len(self.head_names)

    def make_head(self, name, num_classes):
        """Returns the classifier layer of head `name`."""
        return keras.layers.Dense(num_classes, name=f"{name}_head")

    def unimodal_gradient_gates(self):
        """Per-modality factors on the unimodal heads' encoder gradients.

        Returns:
            `None` (every unimodal head trains its encoder fully), or a
            tensor `(num_heads - 1,)` in [0, 1], one per modality head in
            `head_names` order: the gradient that head m's loss sends into
            the features it reads is multiplied by entry m. The head's own
            kernel trains as before, and no forward value changes. Here,
            head stopping's gates, or `None` without it.
        """
        if self.head_stopping is None:
            return None
        return ops.stop_gradient(self.head_stopping.gates[:-1])

    def modulate(self, logits):
        """Maps raw per-head logits to the logits the loss sees."""
        return logits

    def fused_head_input(self, features, logits):
        """What the fused head reads: the fusion layer's fused feature.

        Args:
            features: dict. The fusion layer's outputs (one feature per
                modality and `"fused"`).
            logits: dict. The modality heads' raw logits.
        """
        return features[FUSED]

    def head_loss_weights(self):
        """Per-head loss weights, shape `(num_heads,)`; all ones here."""
        return ops.ones((self.num_heads,))

    def compute_loss(self, y, logits, sample_weight=None, features=None):
        """Training loss of one batch.

        Args:
            y: int tensor. Labels, shape `(batch,)`.
            logits: dict. Raw per-head logits.
            sample_weight: float tensor or `None`.
            features: dict or `None`. The features each head reads (one per
                modality and `"fused"`), not detached: loss terms on them
                train the encoders (PMR's prototype losses).

        Returns:
            `(total, head_losses)`: the scalar loss to differentiate and the
            per-head losses of the modulated logits, shape `(num_heads,)`.
        """
        modulated = self.modulate(logits)
        head_losses = ops.stack(
            [
                cross_entropy(y, modulated[h], sample_weight)
                for h in self.head_names
            ]
        )
        total = ops.sum(head_losses * self.head_loss_weights())
        return total, head_losses

    def transform_gradients(self, grads, variables, groups, step):
        """Rescales gradients; identity here.

        Args:
            grads: list of tensors, one per trainable variable: the
                gradients of the global batch's loss, also with several
                replicas or processes (each backend's step sees to it).
            variables: list of the model's trainable variables.
            groups: dict from modality name to the list of indices (into
                `variables`) of that modality's encoder variables.
            step: `StepRecord` of this batch, before the optimizer step:
                labels, raw logits, features and `finite`.

        Returns:
            `(grads, new_state)`: the list of gradients to apply and a list
            of `(variable, new value)` pairs of the balancer's state.
        """
        return grads, []

    def update(self, step):
        """The balancer's own new state after a step; none here.

        Args:
            step: `StepRecord` of the step's forward pass (the optimizer
                step has not been applied yet).

        Returns:
            A list of `(variable, new value)` pairs.
        """
        return []

    def state_update(self, step):
        """The balancer's whole new state after a step: `update`'s, then
        its head stopping's.

        Args:
            step: `StepRecord` of the step's forward pass (the optimizer
                step has not been applied yet).

        Returns:
            A list of `(variable, new value)` pairs.
        """
        new_state = list(self.update(step))
        if self.head_stopping is not None:
            new_state += self.head_stopping.update(
                step.held_out_losses, step.held_out_flag
            )
        return new_state

    def apply_transform_gradients(self, grads, variables, groups, step):
        """`transform_gradients`, its new state assigned if the step was
        finite. Returns the gradients."""
        grads, new_state = self.transform_gradients(
            grads, variables, groups, step
        )
        self.assign_if_finite(new_state, step.finite)
        return grads

    def apply_update(self, step):
        """`state_update`, its new state assigned if the step was
        finite."""
        self.assign_if_finite(self.state_update(step), step.finite)

    @staticmethod
    def assign_if_finite(new_state, finite):
        """Assigns each `(variable, value)` pair where `finite` holds; a
        step with a non-finite loss leaves every variable as it was."""
        for variable, value in new_state:
            variable.assign(ops.where(finite, value, variable.value))

    def step_logs(self):
        """Scalars to log after each step, by name: here head stopping's
        gate of every modality head (`<modality>_gate`). Subclasses add
        theirs to these."""
        if self.head_stopping is None:
            return {}
        gates = self.head_stopping.gates
        return {
            f"{h}_gate": gates[i] for i, h in enumerate(self.head_names[:-1])
        }

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config["head_stopping"] = (
            None
            if self.head_stopping is None
            else keras.saving.serialize_keras_object(self.head_stopping)
        )
        return config

    def save_own_variables(self, store):
        """Saves the state variables and which balancer they belong to
        (its registered name, under `BALANCER_KEY`)."""
        super().save_own_variables(store)
        store[BALANCER_KEY] = encode_name(self._saved_name())

    def load_own_variables(self, store):
        """Restores the state variables; a file written by another
        balancer raises (see `check_saved_balancer`)."""
        self.check_saved_balancer(store)
        own = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])

    def _saved_name(self):
        return keras.saving.get_registered_name(type(self))

    def check_saved_balancer(self, store):
        """Raises unless `store` holds this balancer's kind of state.

        Args:
            store: the balancer's entry of a weights file.

        Raises:
            ValueError: when the file names another balancer, or (a file
                that names none) holds another number of state variables.
        """
        keys = list(store.keys())
        own = self._trainable_variables + self._non_trainable_variables
        mine = f"{type(self).__name__} ({self._saved_name()})"
        if BALANCER_KEY in keys:
            saved = decode_name(store[BALANCER_KEY])
            if saved == self._saved_name():
                return
            theirs = f"{saved.split('>')[-1]} ({saved})"
        else:
            count = sum(k.isdigit() for k in keys)
            if count == len(own):
                return
            theirs = f"a balancer with {count} state variables"
        raise ValueError(
            f"This weights file holds the state of the balancer {theirs}; "
            f"the model's balancer is {mine}, with {len(own)} state "
            "variables. Loading one balancer's state into another would "
            "drop or misread it. Build the model with the balancer that "
            "wrote the file, or pass `skip_mismatch=True` to `load_weights` "
            "to load every other weight and leave the balancer's state as "
            "it is."
        )


@keras.saving.register_keras_serializable(package="keras_olm")
class JointTraining(Balancer):
    """Plain joint training: only the fused head's loss trains the model.

    This is what `balancer=None` means. The unimodal heads still exist and
    are trained, but on detached features: they are linear probes that
    report how much each encoder has learned without feeding any gradient
    back into it, so per-head accuracy is comparable across balancers.
    The loss minimised, logged as `loss`, is the fused head's loss plus
    the probes' losses; the probes' terms reach only the probes' weights,
    so the encoders and the fusion follow the fused loss (`fused_loss`)
    alone.

    Args:
        **kwargs: passed to `keras.layers.Layer`.
    """

    detach_unimodal_heads = True
    accepts_head_stopping = False


class ModalityBalancer(Balancer):
    """Base of the balancers that compare or alternate the modalities.

    It checks in `build_heads` that there are at least 2 modalities and
    keeps them in `modalities` (the head names but the fused one), holds
    the head layers it makes in `_heads.layers` (by head name, out of
    Keras' tracking: the model tracks them), and scales each modality's
    encoder gradients (`scale_modality_gradients`).

    Args:
        **kwargs: passed to `Balancer`.
    """

    #: How the error message says what the balancer does with the
    #: modalities.
    modality_role = "compares modalities"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._heads = HeadLayers()

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        self.modalities = self.head_names[:-1]
        if len(self.modalities) < 2:
            raise ValueError(
                f"{type(self).__name__} {self.modality_role}: it needs at "
                f"least 2; got {self.modalities}."
            )

    def scale_modality_gradients(self, grads, groups, coefficients, then=None):
        """Multiplies the gradients of modality m's encoder by entry m.

        Args:
            grads: list of tensors (or `None`), one per trainable variable.
            groups: dict from modality name to the indices (into `grads`)
                of that modality's encoder variables.
            coefficients: tensor `(num_modalities,)`, in `modalities`
                order.
            then: callable or `None`. `then(gradient, scaled)` returns
                the gradient to keep (OGM-GE adds noise), called in
                modality then variable order.

        Returns:
            The new list of gradients; `None` entries stay `None`.
        """
        grads = list(grads)
        for i, m in enumerate(self.modalities):
            for j in groups.get(m, []):
                g = grads[j]
                if g is None:
                    continue
                scaled = g * ops.cast(coefficients[i], g.dtype)
                grads[j] = scaled if then is None else then(g, scaled)
        return grads
