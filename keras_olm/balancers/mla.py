"""Multimodal Learning with Alternating unimodal adaptation (MLA).

Zhang, Yoon, Bansal and Yao, "Multimodal Representation Learning by
Alternating Unimodal Adaptation", CVPR 2024. The modalities share one
linear head W, and training alternates between them: a step trains one
modality's encoder and the shared head on that modality's cross-entropy
alone, so no modality's gradient competes with another's in its encoder.
So that learning one modality does not overwrite what the head learned
from the others, the head's gradient is projected (orthogonal weight
modification, as in Zeng et al., 2019) away from the span of the
features it was trained on, with a projector P updated recursively from
the mean feature r of each step's batch:

    P <- P - (P rᵀ)(P rᵀ)ᵀ / (α + r P rᵀ)            (projector update)
    P <- P / ||P||_F                                 (as the official code)
    ∇W <- P ∇W                                      (gradient modification)

At test time the unimodal outputs are fused by their uncertainty: with
e_m = -Σ_c p_m,c log p_m,c the entropy of modality m's softmax output,

    λ_m = exp(max_k e_k - e_m) / Σ_j exp(max_k e_k - e_j)
    z   = Σ_m λ_m · W f_m                            (uncertainty fusion)

so the more confident modality weighs more, sample by sample.

Equation numbers: all unconfirmed. No copy of the paper's text past its
abstract could be read here, so none of the formulas above is cited by
number and none could be checked against the paper itself; they were
checked against the official code instead (below).

Here the shared head is every modality head (`SharedHead`, which also
holds P), and the fused head is `UncertaintyFusion`, a layer without
weights that fuses the modality heads' logits as above (it reads them
through the balancer's `fused_head_input` hook), so `predict` gives the
fused prediction of the paper. The fusion layer's own fused feature is
not read: use a fusion without weights of its own (`LateFusion`), and
encoders of the same output width (the head is shared).

Differences from the official code
(`github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-
Adaptation`, and its port in GeWu-Lab's BalanceBenchmark):
- the alternation is over steps (step t trains modality t mod M with one
  optimizer step), where the official code takes one optimizer step per
  modality on every batch; with a stateful optimizer (Adam, momentum) the
  resting encoders still move by their momentum;
- α is `alpha · 0.1^(i / steps_per_epoch)` for the i-th step of an epoch
  when `steps_per_epoch` is given (the official `0.1^(1 + i / n)` for the
  default `alpha=0.1`), else the constant `alpha`;
- the head's bias is not projected (as the official code), and P is
  neither updated nor applied on the very first step (as the official
  code's `exp_count != 0`); the projected gradient replaces the gradient
  (the original code; BalanceBenchmark adds it to the gradient instead);
- the update's denominator is the scalar α + r P rᵀ of orthogonal weight
  modification; the official code divides elementwise by the matrix
  α + (P rᵀ) r (`torch.mm(k, r)`, an outer product);
- the fusion weights are per sample, the entropy taken over each
  sample's classes; the official `calculate_entropy` takes the softmax
  over the batch axis and sums over the whole batch, giving one weight
  per modality and batch;
- in the official repository's snapshot read here, `before_update`
  projects only a parameter named `module.weight`, a name the shared
  `nn.Linear`'s kernel (`weight`) does not have, so there neither is P
  updated nor the gradient projected; BalanceBenchmark's port matches
  `weight`.
"""

import keras
from keras import ops

from keras_olm.balancers.base import ModalityBalancer
from keras_olm.balancers.common import cross_entropy
from keras_olm.layers.base import FUSED

# --- the math, as pure functions -----------------------------------------


def update_projector(projector, features, alpha):
    """One recursive update of the projector P, then P / ||P||_F.

    Args:
        projector: tensor `(dim, dim)`. P.
        features: tensor `(batch, dim)`. The step's features; their mean
            is r.
        alpha: float scalar. The ridge α.

    Returns:
        The new P, `(dim, dim)`.
    """
    projector = ops.convert_to_tensor(projector, "float32")
    r = ops.mean(ops.convert_to_tensor(features, "float32"), 0, keepdims=True)
    k = ops.matmul(projector, ops.transpose(r))  # (dim, 1)
    # projector update P - (P rᵀ)(P rᵀ)ᵀ / (α + r P rᵀ) (equation number
    # unconfirmed; the denominator is a scalar, see the module docstring)
    new = projector - ops.matmul(k, ops.transpose(k)) / (
        alpha + ops.matmul(r, k)
    )
    # P / ||P||_F, as the official code
    return new / ops.sqrt(ops.sum(ops.square(new)))


def project_gradient(projector, kernel_gradient):
    """P ∇W for a kernel `(dim, units)` (the transpose of torch's
    `∇W Pᵀ` for a weight `(units, dim)`)."""
    return ops.matmul(
        ops.convert_to_tensor(projector, "float32"),
        ops.convert_to_tensor(kernel_gradient, "float32"),
    )


def entropy_weights(logits):
    """The uncertainty-fusion weights λ_m of every sample.

    Args:
        logits: list of M tensors `(batch, num_classes)`.

    Returns:
        A tensor `(M, batch)` whose columns sum to 1: exp(max_k e_k - e_m)
        normalised, with e_m the entropy of softmax(logits[m]).
    """
    entropies = []
    for z in logits:
        z = ops.convert_to_tensor(z, "float32")
        log_p = ops.log_softmax(z, axis=-1)
        # e_m = -Σ_c p_m,c log p_m,c per sample (equation number
        # unconfirmed)
        entropies.append(-ops.sum(ops.exp(log_p) * log_p, axis=-1))
    entropies = ops.stack(entropies)
    # λ_m = exp(max_k e_k - e_m) / Σ_j exp(max_k e_k - e_j)
    shifted = ops.max(entropies, axis=0, keepdims=True) - entropies
    weights = ops.exp(shifted)
    return weights / ops.sum(weights, axis=0, keepdims=True)


def uncertainty_fusion(logits):
    """Σ_m λ_m z_m: the modalities' logits weighted by `entropy_weights`."""
    weights = entropy_weights(logits)
    stacked = ops.stack([ops.convert_to_tensor(z, "float32") for z in logits])
    return ops.sum(ops.expand_dims(weights, -1) * stacked, axis=0)


# --- the layers -----------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class SharedHead(keras.layers.Layer):
    """The linear head every modality shares, with MLA's projector.

    The logits are `inputs @ kernel + bias`, as a `Dense` layer. The
    projector P (`dim × dim`, identity at first) is a non-trainable
    variable created with the kernel, so it is saved with the model.
    Every modality's features must have the same width.

    Args:
        units: int. Number of classes.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    head = keras_olm.balancers.SharedHead(6)
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
        self.projector = self.add_weight(
            name="projector",
            shape=(dim, dim),
            initializer="identity",
            trainable=False,
        )

    def _check_width(self, width):
        built = self.kernel.shape[0] if self.built else None
        if None not in (width, built) and width != built:
            raise ValueError(
                f"MLA's shared head was built for features of width {built}; "
                f"got {width}. Every modality's encoder must give features "
                "of the same width."
            )

    def call(self, inputs):
        self._check_width(inputs.shape[-1])
        return ops.matmul(inputs, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        self._check_width(input_shape[-1])
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class UncertaintyFusion(keras.layers.Layer):
    """MLA's fused head: the modalities' logits weighted by confidence.

    Takes a dict from modality name to logits `(batch, num_classes)` and
    returns `Σ_m λ_m z_m` (`uncertainty_fusion`), in the layer's compute
    dtype; the entropies and the weighted sum are computed in float32. It
    has no weights; it takes the keyword arguments of `keras.layers.Layer`.

    Example:
    ```python
    fused = keras_olm.balancers.UncertaintyFusion()(
        {"audio": keras.ops.ones((2, 6)), "visual": keras.ops.zeros((2, 6))}
    )  # (2, 6)
    ```
    """

    def call(self, logits):
        fused = uncertainty_fusion(list(logits.values()))
        return ops.cast(fused, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(next(iter(input_shape.values())))


@keras.saving.register_keras_serializable(package="keras_olm")
class MLA(ModalityBalancer):
    """MLA: alternating unimodal training of a shared head.

    Every modality head is one `SharedHead`; the fused head is
    `UncertaintyFusion` of their logits. Step t trains modality
    `t mod M` only: the loss is that modality's cross-entropy through the
    shared head, and the head's kernel gradient is projected by P after P
    is updated with the modality's mean feature (see the module
    docstring). The step counter and P are non-trainable variables (P
    lives in the shared head). Logs `mla_modality`, the index of the
    modality trained by the last step. MLA takes no `head_stopping`: its
    fused head has no loss, and each step's loss is one modality's.

    Args:
        alpha: float. The ridge α of the projector update. Defaults to
            `0.1` (the official code's value at the start of an epoch).
        steps_per_epoch: int or `None`. With it, α decays within each
            epoch as the official code's `0.1^(1 + i / n)`; `None` keeps
            α constant. Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},  # same width
        num_classes=6,
        balancer=keras_olm.balancers.MLA(),
    )
    model.compile(optimizer="adam")
    model.fit({"audio": xa, "visual": xv}, y, epochs=10)
    ```

    References:
        - [Zhang et al., 2024](https://arxiv.org/abs/2311.10707)
    """

    accepts_head_stopping = False
    transforms_gradients = True
    modality_role = "alternates between modalities"

    def __init__(self, alpha=0.1, steps_per_epoch=None, **kwargs):
        super().__init__(**kwargs)
        if not float(alpha) > 0:
            raise ValueError(f"alpha must be > 0; got {alpha}")
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1; got {steps_per_epoch}"
            )
        self.alpha = float(alpha)
        self.steps_per_epoch = (
            None if steps_per_epoch is None else int(steps_per_epoch)
        )

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def make_head(self, name, num_classes):
        if name == FUSED:
            head = UncertaintyFusion(name=f"{name}_head")
        else:
            if "shared" not in self._heads.layers:
                self._heads.layers["shared"] = SharedHead(
                    num_classes, name="shared_head"
                )
            head = self._heads.layers["shared"]
        self._heads.layers[name] = head
        return head

    def fused_head_input(self, features, logits):
        return {m: logits[m] for m in self.modalities}

    def _active(self):
        """One-hot `(M,)` of the modality this step trains."""
        m = len(self.modalities)
        return ops.one_hot(self.steps.value % m, m)

    def compute_loss(self, y, logits, sample_weight=None, features=None):
        head_losses = ops.stack(
            [
                cross_entropy(y, logits[h], sample_weight)
                for h in self.head_names
            ]
        )
        active = ops.cast(self._active(), head_losses.dtype)
        total = ops.sum(head_losses[:-1] * ops.stop_gradient(active))
        return total, head_losses

    def _alpha(self, steps):
        if self.steps_per_epoch is None:
            return ops.convert_to_tensor(self.alpha, "float32")
        position = ops.cast(steps % self.steps_per_epoch, "float32")
        return self.alpha * ops.power(0.1, position / self.steps_per_epoch)

    def transform_gradients(self, grads, variables, groups, step):
        head = self._heads.layers["shared"]
        steps = self.steps.value
        active = self._active()
        mean_input = sum(
            active[i] * ops.convert_to_tensor(step.features[m], "float32")
            for i, m in enumerate(self.modalities)
        )
        projector = update_projector(
            head.projector.value, mean_input, self._alpha(steps)
        )
        first = steps == 0
        projector = ops.where(first, head.projector.value, projector)
        grads = list(grads)
        for j, v in enumerate(variables):
            if v is head.kernel and grads[j] is not None:
                projected = project_gradient(projector, grads[j])
                grads[j] = ops.cast(
                    ops.where(first, grads[j], projected), grads[j].dtype
                )
        return grads, [
            (head.projector, projector),
            (self.steps, steps + 1),
        ]

    def step_logs(self):
        m = len(self.modalities)
        return {"mla_modality": ops.cast((self.steps.value - 1) % m, "float32")}

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, steps_per_epoch=self.steps_per_epoch)
        return config


__all__ = [
    "MLA",
    "SharedHead",
    "UncertaintyFusion",
    "entropy_weights",
    "project_gradient",
    "uncertainty_fusion",
    "update_projector",
]
