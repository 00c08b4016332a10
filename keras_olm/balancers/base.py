"""The balancer interface shared by OLM and the field's other methods.

A balancer is a small Keras layer that owns its own state (non-trainable
variables) and exposes a handful of hooks that `BalancedMultimodalModel`
calls at fixed points of a training step. The shape follows optax's
transformations: every balancer has the same hooks, all of them default to
"do nothing", and the model never needs to know which balancer it runs.

The hooks, in the order the model calls them in one training step:

1. `make_head(name, num_classes)`: build the classifier of one head
   (MMCosine-style balancers replace the linear head).
2. `detach_unimodal_heads`: whether the unimodal heads read detached
   features (then they are linear probes that cannot train the encoders).
3. `modulate(logits)`: map raw per-head logits to the logits the loss
   sees (OLM multiplies each head by its coefficient).
4. `compute_loss(y, logits, sample_weight, features)`: the training loss and the
   per-head losses (G-Blend and GradNorm reweight them, PMR adds terms).
5. `transform_gradients(grads, variables, groups, step)`: rescale
   gradients per modality (OGM-GE, AGM); `step` carries the batch's
   detached logits, per-head losses and features.
6. `update(step)`: advance the balancer's own state from what the step
   measured (OLM's coefficients, G-Blend's weights), through `assign`
   only, so the same code runs inside every backend's compiled step.
7. `step_logs()`: scalars shown in the progress bar and `History`.
"""

import keras
from keras import ops

FUSED = "fused"


def cross_entropy(y, logits, sample_weight=None):
    """Mean sparse categorical cross-entropy of one head.

    Args:
        y: int tensor. Labels, shape `(batch,)`.
        logits: float tensor. Logits, shape `(batch, num_classes)`.
        sample_weight: float tensor or `None`. Per-sample weights.

    Returns:
        A scalar: the batch mean of the per-sample losses (weighted by
        `sample_weight` where given, divided by the batch size, as Keras'
        `"sum_over_batch_size"` reduction does).
    """
    per_sample = keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True
    )
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(sample_weight, per_sample.dtype)
    return ops.mean(per_sample)


class StepMeasurements:
    """What one training step measured, handed to `Balancer.update`.

    Args:
        y: int tensor. The batch labels.
        logits: dict. Raw (unmodulated) logits per head, detached.
        head_losses: tensor. Per-head training losses on the raw logits,
            shape `(num_heads,)`, in `head_names` order, detached.
        dev_losses: tensor. Per-head losses on a held-out batch, shape
            `(num_heads,)`; meaningful only where `dev_flag` is 1.
        dev_flag: float scalar tensor. 1 when this step measured a
            held-out batch, else 0.
        finite: bool scalar tensor. False when any loss of the step was
            NaN or infinite; balancers must then keep their state.
        features: dict or `None`. The detached features each head read
            (the fusion layer's outputs: one per modality and `"fused"`).
    """

    def __init__(
        self,
        y,
        logits,
        head_losses,
        dev_losses,
        dev_flag,
        finite,
        features=None,
    ):
        self.features = features
        self.y = y
        self.logits = logits
        self.head_losses = head_losses
        self.dev_losses = dev_losses
        self.dev_flag = dev_flag
        self.finite = finite


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
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, balancer=keras_olm.balancers.Balancer()
    )
    ```
    """

    #: Whether the model must feed held-out batches to `update`.
    needs_dev_data = False
    #: Whether `update` reads the step's measurements (else it is skipped
    #: and the model does not compute them).
    measures_steps = False
    #: Whether `update` reads `step.features` (else they are not passed).
    update_reads_features = False
    #: Whether unimodal heads read detached features (linear probes).
    detach_unimodal_heads = False

    def __init__(self, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
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
        self.built = True

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

    def modulate(self, logits):
        """Maps raw per-head logits to the logits the loss sees."""
        return logits

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

    def transform_gradients(self, grads, variables, groups, step=None):
        """Rescales gradients; identity here.

        Args:
            grads: list of tensors, one per trainable variable.
            variables: list of the model's trainable variables.
            groups: dict from modality name to the list of indices (into
                `variables`) of that modality's encoder variables.
            step: `StepMeasurements` of this batch, before the optimizer
                step: labels, detached raw logits, per-head training losses
                and features; no held-out losses (`dev_losses` is `None`).

        Returns:
            The list of gradients to apply.
        """
        return grads

    def update(self, step):
        """Advances the balancer's state; nothing to do here.

        Args:
            step: `StepMeasurements`.
        """

    def step_logs(self):
        """Scalars to log after each step, by name."""
        return {}

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class JointTraining(Balancer):
    """Plain joint training: the loss of the fused head only.

    This is what `balancer=None` means. The unimodal heads still exist and
    are trained, but on detached features: they are linear probes that
    report how much each encoder has learned without feeding any gradient
    back into it, so per-head accuracy is comparable across balancers.

    Args:
        **kwargs: passed to `keras.layers.Layer`.
    """

    detach_unimodal_heads = True
