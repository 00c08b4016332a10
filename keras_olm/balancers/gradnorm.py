"""GradNorm on the per-head losses (Chen et al., ICML 2018).

"GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks". Each head i (every modality's and the fused one) has
a loss weight w_i; the training loss is Σ_i w_i L_i. The weights move so
that each head's weighted gradient norm G_i = ||∇ w_i L_i|| tracks the
mean norm scaled by how far behind that head's training is:

    L̃_i(t) = L_i(t) / L_i(0)                     (loss ratio, Sec. 3.1)
    r_i(t) = L̃_i(t) / mean_j L̃_j(t)             (relative inverse rate)
    L_grad = Σ_i | G_i(t) - Ḡ(t) · r_i(t)^α |      (Eq. 1)

with Ḡ · r^α held constant, one gradient step on w, and the weights
renormalised to sum to the number of heads (Sec. 3.2).

Where the norm is taken: the paper uses the weights W of the last layer
shared by the tasks. Here the heads share no layer with each other (each
modality head shares its encoder with the fused head), so G_i is the norm
of the gradient of w_i L_i with respect to the feature the head reads,
in closed form for a linear head: ∂L/∂f = (softmax(z) - onehot(y)) Kᵀ / B
for kernel K and batch size B. It is measured in `update`, which the
training step runs before the optimizer step, with that step's logits and
the heads' kernels as the forward pass read them.
"""

import keras
from keras import ops

from keras_olm.balancers.base import Balancer
from keras_olm.balancers.common import HeadLayers

# --- the math of Eq. 1, as pure functions --------------------------------


def head_feature_gradient_norm(y, logits, kernel):
    """||∂ CE(f K + b, y) / ∂f||_F for a linear head, batch-mean CE.

    Args:
        y: int tensor `(batch,)`. Labels.
        logits: tensor `(batch, num_classes)`. The head's logits.
        kernel: tensor `(dim, num_classes)`. The head's kernel K.

    Returns:
        A scalar: the Frobenius norm of (softmax(z) - onehot(y)) Kᵀ / B.
    """
    logits = ops.convert_to_tensor(logits, "float32")
    kernel = ops.convert_to_tensor(kernel, "float32")
    probs = ops.softmax(logits, axis=-1)
    onehot = ops.one_hot(ops.cast(y, "int32"), ops.shape(logits)[-1])
    batch = ops.cast(ops.shape(logits)[0], "float32")
    grad = ops.matmul(probs - onehot, ops.transpose(kernel)) / batch
    return ops.sqrt(ops.sum(ops.square(grad)))


def gradnorm_targets(weights, grad_norms, losses, initial_losses, alpha):
    """Weighted norms G_i and their targets Ḡ · r_i^α (Sec. 3.1-3.2).

    Args:
        weights: tensor `(num_heads,)`. Loss weights w_i.
        grad_norms: tensor `(num_heads,)`. Unweighted gradient norms.
        losses: tensor `(num_heads,)`. Current losses L_i(t).
        initial_losses: tensor `(num_heads,)`. L_i(0).
        alpha: float. The asymmetry α.

    Returns:
        `(G, targets)`: G_i = w_i · ||∇L_i|| and the constant targets.
    """
    weights, grad_norms, losses, initial_losses = [
        ops.convert_to_tensor(v, "float32")
        for v in (weights, grad_norms, losses, initial_losses)
    ]
    g = weights * grad_norms
    ratio = losses / ops.maximum(initial_losses, 1e-12)
    relative = ratio / ops.mean(ratio)
    targets = ops.mean(g) * ops.power(relative, alpha)
    return g, ops.stop_gradient(targets)


def gradnorm_loss(g, targets):
    """L_grad = Σ_i |G_i - target_i| (Eq. 1)."""
    return ops.sum(ops.abs(g - targets))


def gradnorm_weight_gradient(g, targets, grad_norms):
    """dL_grad / dw_i = sign(G_i - target_i) · ||∇L_i||, targets fixed."""
    return ops.sign(g - targets) * ops.convert_to_tensor(grad_norms, "float32")


def renormalize(weights, total, floor=1e-3):
    """Clips the weights at `floor` and rescales them to sum to `total`."""
    weights = ops.maximum(ops.convert_to_tensor(weights, "float32"), floor)
    return weights * (total / ops.sum(weights))


# --- the layer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class GradNorm(Balancer):
    """GradNorm: per-head loss weights that equalise training rates.

    The loss is Σ_i w_i L_i over the heads, weights detached. At every
    step, before the optimizer step, each head's gradient norm with
    respect to its input feature is computed in closed form
    (`head_feature_gradient_norm`), and the
    weights take one SGD step down L_grad (Eq. 1): a head whose loss has
    fallen less than the others' since the first step (a lagging,
    under-trained modality) gets its weight raised, a fast head lowered.
    The weights are then clipped at `1e-3` and renormalised to sum to the
    number of heads, as the paper renormalises to the number of tasks.

    Args:
        alpha: float. The asymmetry α of Eq. 1 (the paper uses 0.12-1.5).
            Defaults to `1.5`.
        learning_rate: float. SGD step size of the weights. Defaults to
            `0.025`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, balancer=keras_olm.balancers.GradNorm()
    )
    ```

    References:
        - [Chen et al., 2018](https://arxiv.org/abs/1711.02257)
    """

    measures_steps = True

    def __init__(self, alpha=1.5, learning_rate=0.025, **kwargs):
        super().__init__(**kwargs)
        if float(alpha) < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        if float(learning_rate) <= 0:
            raise ValueError(f"learning_rate must be > 0; got {learning_rate}")
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        self._heads = HeadLayers()

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        self.loss_weights = self.add_state("loss_weights", 1.0)
        self.grad_norms = self.add_state("grad_norms")
        self.initial_losses = self.add_state("initial_losses", 1.0)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def make_head(self, name, num_classes):
        head = keras.layers.Dense(num_classes, name=f"{name}_head")
        self._heads.layers[name] = head
        return head

    def head_loss_weights(self):
        return ops.stop_gradient(self.loss_weights.value)

    def update(self, step):
        old_w = self.loss_weights.value
        old_initial = self.initial_losses.value
        steps = self.steps.value + 1
        norms = ops.stack(
            [
                head_feature_gradient_norm(
                    step.y,
                    step.logits[h],
                    ops.stop_gradient(self._heads.layers[h].kernel.value),
                )
                for h in self.head_names
            ]
        )
        initial = ops.where(steps == 1, step.head_losses, old_initial)
        g, targets = gradnorm_targets(
            old_w, norms, step.head_losses, initial, self.alpha
        )
        grad = gradnorm_weight_gradient(g, targets, norms)
        new_w = renormalize(
            old_w - self.learning_rate * grad, float(self.num_heads)
        )
        return [
            (self.loss_weights, new_w),
            (self.grad_norms, norms),
            (self.initial_losses, initial),
            (self.steps, steps),
        ]

    def step_logs(self):
        logs = {
            f"{h}_gradnorm_weight": self.loss_weights.value[i]
            for i, h in enumerate(self.head_names)
        }
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, learning_rate=self.learning_rate)
        return config


__all__ = [
    "GradNorm",
    "gradnorm_loss",
    "gradnorm_targets",
    "gradnorm_weight_gradient",
    "head_feature_gradient_norm",
    "renormalize",
]
