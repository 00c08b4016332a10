"""MMPareto (Wei and Hu, ICML 2024).

"MMPareto: Boosting Multimodal Learning with Innocent Unimodal
Assistance". Every head trains on its own cross-entropy (the multimodal
loss L_m of the fused head and one unimodal loss L_u^k per modality), as
with `"heads"`, but on each modality's encoder the gradients of the two
objectives are not simply added. With g_m the gradient of the multimodal
loss and g_u that of the modality's unimodal loss, both over all the
encoder's variables:

    cos = <g_m, g_u> / (||g_m|| ||g_u||)                (conflict test)
    (a_m, a_u) = (1/2, 1/2)                  if cos >= 0 (no conflict)
    (a_m, a_u) = argmin_{a_m + a_u = 1, a ≥ 0} ||a_m g_m + a_u g_u||²
               = (γ, 1 - γ),  γ = <g_u - g_m, g_u> / ||g_m - g_u||²
                                              otherwise (MGDA, two tasks)
    d = 2 (a_m g_m + a_u g_u)                           (Pareto direction)
    g <- s · d · max(1, ||g_m + g_u|| / ||d||)          (magnitude rescale)

The min-norm weights are the two-task case of the multiple-gradient
descent algorithm (Désidéri's MGDA, as Sener and Koltun solve it); the
paper's Sec. 4 integrates the gradients this way only when they conflict
and, as its analysis of the unimodal loss' larger gradient magnitude and
covariance asks, gives the final gradient a magnitude no smaller than
that of the plain sum, then scales it by s (1.5 in the official code).

Equation numbers: all unconfirmed. No copy of the paper's text past its
abstract could be read here, so none of the steps above is cited by
number and none could be checked against the paper itself; they were
checked against the official code instead (below).

Differences from the official code
(`github.com/GeWu-Lab/MMPareto_ICML2024`, `code/MMPareto.py`):
- the multimodal gradient g_m is taken apart from the total (the step's
  `head_gradients` hook: one more backward pass through the same forward
  pass), and g_u is the total's gradient minus g_m on the encoder (the
  official code runs one backward pass per loss); with late fusion these
  agree, and with fusions in which one modality's unimodal head reads
  another's encoder g_u is every unimodal loss' gradient on that encoder;
- the two-task min-norm weight is the closed form above, clipped to
  [0, 1] (the official `MinNormSolver` returns the same closed form for
  two tasks without iterating, but sets γ to 0.999 when
  <g_m, g_u> ≥ ||g_m||² and to 0.001 when <g_m, g_u> ≥ ||g_u||²);
- gradients conflict when their cosine is negative; the official code
  takes the min-norm weights at a cosine of exactly 0 too. The two differ
  only when one gradient vanishes, where the min-norm point is the zero
  vector and the encoder would get no gradient at all;
- with head stopping, a stopped modality's g_u is exactly zero (its gate
  times the total's minus g_m), so that encoder trains on s · g_m, the
  multimodal loss alone, as head stopping means;
- like the official code, the conflict test and the weights use all of
  an encoder's variables at once, and the rescaling is per variable
  (`||g_m + g_u||` and `||d||` of each variable), over every trainable
  variable of the encoder; the heads and the fusion layer keep the
  plain sum of the losses' gradients;
- with several devices or processes the weights are those of the global
  batch's gradients, as on one device: JAX's step and torch's (which
  averages the gradients over the processes) see them, and TensorFlow's
  step sums the replicas' gradients before `transform_gradients` under a
  `tf.distribute` strategy.
"""

import keras
from keras import ops

from keras_olm.balancers.base import Balancer
from keras_olm.layers.base import FUSED

# --- the math, as pure functions -----------------------------------------


def _flat(grads):
    return ops.concatenate(
        [ops.reshape(ops.convert_to_tensor(g, "float32"), (-1,)) for g in grads]
    )


def pareto_weights(g_m, g_u, eps=1e-12):
    """MMPareto's weights of the multimodal and the unimodal gradient.

    Args:
        g_m: tensor `(n,)`. The multimodal loss' gradient (flattened).
        g_u: tensor `(n,)`. The unimodal loss' gradient (flattened).
        eps: float. Guards the divisions. Defaults to `1e-12`.

    Returns:
        `(a_m, a_u, cos)`: scalars, `a_m + a_u = 1`; `(1/2, 1/2)` when the
        gradients do not conflict (cosine >= 0, which includes a zero
        gradient), else the min-norm (MGDA) weights.
    """
    g_m = ops.convert_to_tensor(g_m, "float32")
    g_u = ops.convert_to_tensor(g_u, "float32")
    mm = ops.sum(g_m * g_m)
    uu = ops.sum(g_u * g_u)
    mu = ops.sum(g_m * g_u)
    # conflict test: cosine of g_m and g_u (equation number unconfirmed)
    cos = mu / ops.maximum(ops.sqrt(mm) * ops.sqrt(uu), eps)
    # two-task min-norm (MGDA) weight of g_m
    gamma = (uu - mu) / ops.maximum(mm + uu - 2.0 * mu, eps)
    gamma = ops.clip(gamma, 0.0, 1.0)
    a_m = ops.where(cos >= 0, 0.5, gamma)
    return a_m, 1.0 - a_m, cos


def pareto_gradient(g_m, g_u, a_m, a_u, scale):
    """The final gradient of one variable: s · d · max(1, ||g_m + g_u|| /
    ||d||) with d = 2 (a_m g_m + a_u g_u).

    Args:
        g_m: tensor. The multimodal loss' gradient of the variable.
        g_u: tensor. The unimodal loss' gradient of the variable.
        a_m: scalar. Weight of g_m (`pareto_weights`).
        a_u: scalar. Weight of g_u.
        scale: float. The final scale s.

    Returns:
        A tensor shaped as `g_m`.
    """
    g_m = ops.convert_to_tensor(g_m, "float32")
    g_u = ops.convert_to_tensor(g_u, "float32")
    # d = 2 (a_m g_m + a_u g_u), then the magnitude rescale (equation
    # numbers unconfirmed)
    direction = 2.0 * (a_m * g_m + a_u * g_u)
    total_norm = ops.sqrt(ops.sum(ops.square(g_m + g_u)))
    norm = ops.sqrt(ops.sum(ops.square(direction)))
    ratio = ops.where(norm > 0, total_norm / ops.maximum(norm, 1e-30), 1.0)
    return scale * direction * ops.maximum(ratio, 1.0)


# --- the layer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class MMPareto(Balancer):
    """MMPareto: conflict-free multimodal and unimodal encoder gradients.

    The loss is the sum of every head's cross-entropy (as `"heads"`). The
    step also takes the fused head's loss gradient on its own
    (`head_gradients = ("fused",)`); on every modality's encoder, the
    multimodal gradient g_m and the unimodal one g_u (the total's minus
    g_m) are combined with equal weights when they agree (positive
    cosine) and with the min-norm (MGDA) weights when they conflict, then
    rescaled to at least the plain sum's magnitude and multiplied by
    `scale` (see the module docstring). The last step's weights of the
    multimodal gradient and cosines are kept in non-trainable variables
    (logged as `<modality>_pareto_weight` and `<modality>_pareto_cos`).

    Args:
        scale: float. The final scale s of the encoders' gradients (the
            official code's `gamma`). Defaults to `1.5`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.balancers.MMPareto(),
    )
    model.compile(optimizer="sgd")
    model.fit({"audio": xa, "visual": xv}, y, epochs=10)
    ```

    References:
        - [Wei and Hu, 2024](https://arxiv.org/abs/2405.17730)
    """

    head_gradients = (FUSED,)
    transforms_gradients = True

    def __init__(self, scale=1.5, **kwargs):
        super().__init__(**kwargs)
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0; got {scale}")
        self.scale = float(scale)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        self.modalities = self.head_names[:-1]
        m = (len(self.modalities),)
        self.multimodal_weights = self.add_state(
            "multimodal_weights", 0.5, shape=m
        )
        self.cosines = self.add_state("cosines", 1.0, shape=m)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def transform_gradients(self, grads, variables, groups, step):
        if not step.head_gradients or FUSED not in step.head_gradients:
            raise ValueError(
                "MMPareto needs the fused head's own loss gradients "
                "(StepRecord.head_gradients['fused'])."
            )
        multimodal = step.head_gradients[FUSED]
        grads = list(grads)
        weights, cosines = [], []
        gates = self.unimodal_gradient_gates()
        for i, m in enumerate(self.modalities):
            index = [j for j in groups.get(m, []) if grads[j] is not None]
            if not index:
                weights.append(ops.convert_to_tensor(0.5))
                cosines.append(ops.convert_to_tensor(1.0))
                continue
            g_m = [
                ops.zeros_like(grads[j])
                if multimodal[j] is None
                else ops.convert_to_tensor(multimodal[j])
                for j in index
            ]
            g_u = [
                ops.convert_to_tensor(grads[j]) - g for j, g in zip(index, g_m)
            ]
            if gates is not None:
                # A stopped head's g_u is the round-off of total - g_m;
                # its gate makes it exactly zero.
                g_u = [gates[i] * g for g in g_u]
            a_m, a_u, cos = pareto_weights(_flat(g_m), _flat(g_u))
            for j, gm, gu in zip(index, g_m, g_u):
                new = pareto_gradient(gm, gu, a_m, a_u, self.scale)
                grads[j] = ops.cast(new, grads[j].dtype)
            weights.append(a_m)
            cosines.append(cos)
        return grads, [
            (self.multimodal_weights, ops.stack(weights)),
            (self.cosines, ops.stack(cosines)),
            (self.steps, self.steps.value + 1),
        ]

    def step_logs(self):
        logs = {}
        for i, m in enumerate(self.modalities):
            logs[f"{m}_pareto_weight"] = self.multimodal_weights.value[i]
            logs[f"{m}_pareto_cos"] = self.cosines.value[i]
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config


__all__ = ["MMPareto", "pareto_gradient", "pareto_weights"]
