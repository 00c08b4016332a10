"""Prototypical Modal Rebalance (Fan et al., CVPR 2023).

"PMR: Prototypical Modal Rebalance for Multimodal Learning". Every
modality m keeps one prototype c_k per class (the mean feature of class
k). Negative Euclidean distances to the prototypes are logits of a
non-parametric classifier, whose cross-entropy (the prototypical
cross-entropy, PCE) pulls a modality's features towards its class
prototypes without going through the fused head:

    c_k^m = mean of f^m(x_i) over the samples of class k   (prototypes)
    p^m_k(x) = softmax_k(-||f^m(x) - c_k^m||)              (PCE logits)
    L_PCE^m = -mean_i log p^m_{y_i}(x_i)
    ρ^m = Σ_i p^m_{y_i}(x_i) / Σ_i p^o_{y_i}(x_i)           (imbalance ratio)
    L = L_CE(fused) + Σ_m β_m L_PCE^m,  β_m = α where ρ^m < 1, else 0

so the PCE is added only for the weaker modality, as the official code
does (a constant α on the modality whose prototype score is lower; the
paper's entropy regularisation of the dominant modality is not
implemented). With M > 2 modalities ρ^m is the modality's score over the
mean score of the others, and every modality below 1 gets the PCE.

Differences from the official code: the prototypes are an exponential
moving average of each training batch's class means (updated after every
step, from the detached features) rather than a full pass over the
training set at every epoch; a class not yet seen keeps a zero prototype.
"""

import keras
from keras import ops

from keras_olm.balancers.base import ModalityBalancer
from keras_olm.balancers.common import EpochWindow
from keras_olm.balancers.common import cross_entropy
from keras_olm.balancers.common import discrepancy_ratios
from keras_olm.balancers.common import gate_gradient
from keras_olm.balancers.common import replica_sum
from keras_olm.balancers.common import true_class_scores
from keras_olm.layers.base import FUSED

# --- the math, as pure functions -----------------------------------------


def prototype_logits(features, prototypes, eps=1e-12):
    """Negative Euclidean distances to the class prototypes.

    Args:
        features: tensor `(batch, dim)`.
        prototypes: tensor `(num_classes, dim)`.
        eps: float. The squared distance is clamped at `eps` before the
            square root, so a feature equal to a prototype gets a finite
            (zero) gradient. Defaults to `1e-12`.

    Returns:
        A tensor `(batch, num_classes)`: -||f_i - c_k||.
    """
    features = ops.convert_to_tensor(features, "float32")
    prototypes = ops.convert_to_tensor(prototypes, "float32")
    diff = ops.expand_dims(features, 1) - ops.expand_dims(prototypes, 0)
    squared = ops.sum(ops.square(diff), axis=-1)
    return -ops.sqrt(ops.maximum(squared, eps))


def prototype_cross_entropy(y, features, prototypes, sample_weight=None):
    """The prototypical cross-entropy L_PCE of one modality."""
    return cross_entropy(
        y, prototype_logits(features, prototypes), sample_weight
    )


def pce_coefficients(scores, alpha):
    """β_m: α for every modality whose imbalance ratio is below 1.

    Args:
        scores: tensor `(num_modalities,)`. Summed true-class prototype
            probabilities.
        alpha: float. The PCE weight α.

    Returns:
        A tensor `(num_modalities,)` of 0 and α.
    """
    ratios = discrepancy_ratios(scores)
    return ops.where(ratios < 1.0, alpha, 0.0), ratios


def update_prototypes(prototypes, seen, features, y, momentum):
    """EMA of the class means of one batch.

    Classes present in the batch move to `momentum · old + (1 - momentum) ·
    batch mean`; a class seen for the first time takes its batch mean; the
    others stay.

    Args:
        prototypes: tensor `(num_classes, dim)`.
        seen: tensor `(num_classes,)`. 1 for classes seen before, else 0.
        features: tensor `(batch, dim)`. Detached features.
        y: int tensor `(batch,)`.
        momentum: float in [0, 1).

    Returns:
        `(prototypes, seen)`, updated.
    """
    prototypes = ops.convert_to_tensor(prototypes, "float32")
    seen = ops.convert_to_tensor(seen, "float32")
    features = ops.convert_to_tensor(features, "float32")
    onehot = ops.one_hot(ops.cast(y, "int32"), ops.shape(prototypes)[0])
    counts = ops.sum(onehot, axis=0)
    means = ops.matmul(ops.transpose(onehot), features) / ops.expand_dims(
        ops.maximum(counts, 1.0), -1
    )
    present = ops.expand_dims(counts > 0, -1)
    before = ops.expand_dims(seen > 0, -1)
    moved = momentum * prototypes + (1.0 - momentum) * means
    new = ops.where(present, ops.where(before, moved, means), prototypes)
    return new, ops.maximum(seen, ops.cast(counts > 0, "float32"))


# --- the layers -----------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class PrototypeHead(keras.layers.Layer):
    """A linear head that also holds its modality's class prototypes.

    The logits are `inputs @ kernel + bias`, as a `Dense` layer. The
    prototypes (`units × dim`) and the per-class "seen" flags are
    non-trainable variables created with the kernel, so they are saved
    with the model; `PMR` updates them after every step.

    Args:
        units: int. Number of classes.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor `(batch, dim)`.

    Example:
    ```python
    head = keras_olm.balancers.PrototypeHead(6)
    logits = head(keras.ops.ones((2, 32)))  # (2, 6)
    ```
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel", shape=(dim, self.units), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros"
        )
        self.prototypes = self.add_weight(
            name="prototypes",
            shape=(self.units, dim),
            initializer="zeros",
            trainable=False,
        )
        self.seen = self.add_weight(
            name="seen",
            shape=(self.units,),
            initializer="zeros",
            trainable=False,
        )

    def call(self, inputs):
        return ops.matmul(inputs, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class PMR(ModalityBalancer):
    """PMR: prototypical cross-entropy on the weaker modality.

    The model trains on the fused head's cross-entropy, as plain joint
    training (the unimodal heads are linear probes on detached features),
    plus α times the prototypical cross-entropy of every modality whose
    prototype score is below the others' (see the module docstring). The
    prototypes live in the modality heads (`PrototypeHead`) and follow an
    EMA of each batch's class means. Modulation runs in the epochs
    `[modulation_starts, modulation_ends]`, counted from a step counter
    with `steps_per_epoch` as in `OGMGE`. With `head_stopping`, the PCE
    is the modality's loss that head stopping stops: a stopped modality's
    PCE no longer reaches its encoder (its value is unchanged).

    Args:
        alpha: float. Weight α of the weaker modality's PCE. Defaults to
            `1.0` (the official code's default).
        momentum: float in [0, 1). EMA momentum of the prototypes, per
            step. Defaults to `0.9`.
        modulation_starts: int. First epoch with the PCE. Defaults to `0`.
        modulation_ends: int or `None`. Last epoch with the PCE
            (inclusive); `None` for no end. Defaults to `None`.
        steps_per_epoch: int or `None`. Steps per epoch for the window;
            `None` keeps the PCE on at every step. Defaults to `None`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.balancers.PMR(alpha=1.0),
    )
    ```

    References:
        - [Fan et al., 2023](https://arxiv.org/abs/2211.07089)
    """

    measures_steps = True
    update_reads_features = True
    detach_unimodal_heads = True

    def __init__(
        self,
        alpha=1.0,
        momentum=0.9,
        modulation_starts=0,
        modulation_ends=None,
        steps_per_epoch=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if float(alpha) < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        self.window = EpochWindow(
            modulation_starts, modulation_ends, steps_per_epoch
        )
        self.alpha = float(alpha)
        self.momentum = float(momentum)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        m = (len(self.modalities),)
        self.betas = self.add_state("betas", shape=m)
        self.ratios = self.add_state("ratios", 1.0, shape=m)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def make_head(self, name, num_classes):
        if name == FUSED:
            head = keras.layers.Dense(num_classes, name=f"{name}_head")
        else:
            head = PrototypeHead(num_classes, name=f"{name}_head")
        self._heads.layers[name] = head
        return head

    def _prototypes(self, m):
        return ops.stop_gradient(self._heads.layers[m].prototypes.value)

    def _betas(self, y, features):
        """β_m and ρ_m of a batch. In the loss, the scores are summed over
        the shares of the global batch (`replica_sum`), so that every
        replica or process weighs the PCE as one device would; in
        `update`, which reads the global batch, `replica_sum` is the
        identity."""
        scores = ops.stack(
            [
                true_class_scores(
                    y,
                    prototype_logits(
                        ops.stop_gradient(features[m]), self._prototypes(m)
                    ),
                )
                for m in self.modalities
            ]
        )
        scores = replica_sum(scores)
        betas, ratios = pce_coefficients(scores, self.alpha)
        active = self.window.contains(self.steps.value)
        return ops.where(active, betas, ops.zeros_like(betas)), ratios

    def compute_loss(self, y, logits, sample_weight=None, features=None):
        if features is None:
            raise ValueError("PMR needs the heads' features in compute_loss.")
        total, head_losses = super().compute_loss(
            y, logits, sample_weight, features
        )
        betas, _ = self._betas(y, features)
        gates = self.unimodal_gradient_gates()
        for i, m in enumerate(self.modalities):
            f = features[m]
            if gates is not None:
                f = gate_gradient(f, gates[i])
            pce = prototype_cross_entropy(
                y, f, self._prototypes(m), sample_weight
            )
            total = total + betas[i] * pce
        return total, head_losses

    def update(self, step):
        betas, ratios = self._betas(step.y, step.features)
        new_state = []
        for m in self.modalities:
            head = self._heads.layers[m]
            protos, seen = update_prototypes(
                head.prototypes.value,
                head.seen.value,
                step.features[m],
                step.y,
                self.momentum,
            )
            new_state += [(head.prototypes, protos), (head.seen, seen)]
        return new_state + [
            (self.betas, betas),
            (self.ratios, ratios),
            (self.steps, self.steps.value + 1),
        ]

    def step_logs(self):
        logs = {}
        for i, m in enumerate(self.modalities):
            logs[f"{m}_pmr_beta"] = self.betas.value[i]
            logs[f"{m}_pmr_ratio"] = self.ratios.value[i]
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            momentum=self.momentum,
            modulation_starts=self.window.starts,
            modulation_ends=self.window.ends,
            steps_per_epoch=self.window.steps_per_epoch,
        )
        return config


__all__ = [
    "PMR",
    "PrototypeHead",
    "pce_coefficients",
    "prototype_cross_entropy",
    "prototype_logits",
    "update_prototypes",
]
