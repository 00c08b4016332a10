"""Adaptive Gradient Modulation (Li et al., ICCV 2023).

"Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation". Each modality's share of the fused output is measured as a
Shapley value: with v(S) the fused head's logits when only the
modalities in S are given (the others' inputs replaced by zeros),

    φ_m = Σ_{S ⊆ M∖{m}} |S|! (|M| - |S| - 1)! / |M|! · (v(S ∪ {m}) - v(S))

(the mono-modal response; for two modalities φ_a = ½ (v(a, v) - v(v) +
v(a))). Each response is scored by its cross-entropy, and the scores'
discrepancy, against its running average, sets a gradient coefficient
per modality:

    s_m = mean_i -log max(softmax(φ_m,i)[y_i], 1e-8)      (mono score)
    r_m = exp(M / (M - 1) · (mean_k s_k - s_m))           (ratio)
    ŝ_m(t) = ŝ_m(t - 1) · (t - 1) / t + s_m(t) / t        (running mean)
    η_m = exp(M / (M - 1) · (mean_k ŝ_k - ŝ_m))           (its ratio)
    k_m = exp(α · min(η_m - r_m, 7))                      (coefficient)

and every gradient of modality m's encoder is multiplied by k_m: a
modality whose lead over the others (a lower score) is larger than its
running average is slowed down, one that lags more than usual is sped
up, so the ratios are pulled back towards their running average. The
model trains on the fused head's cross-entropy (the unimodal heads are
linear probes on detached features, as with `balancer=None`).

Equation numbers: all unconfirmed. No copy of the paper's text past its
abstract could be read here, so none of the formulas above is cited by
number and none could be checked against the paper itself; they were
checked against the official code instead (below).

The responses v(S) come from the step's `forward` hook
(`StepRecord.forward`): the model re-run in inference mode on the batch
with some modalities' inputs zeroed. v(M) is the step's own fused logits
(training mode), and v(∅) is taken as 0, as the official code does (it
never runs the model with every input zeroed), so φ_m is the Shapley
value of the game v with v(∅) := 0. That costs 2^M - 2 extra forward
passes per step (2 for two modalities).

Differences from the official code (`github.com/lihong2303/AGM_ICCV2023`,
and its M-modality port `newGrad` in GeWu-Lab's BalanceBenchmark):
- the ratio has the official code's sign in all its branches: r_a =
  exp(s_v - s_a) for CREMA-D and AVE, and exp(M / (M - 1) · (mean_k s_k
  - s_m)) for AV-MNIST, CMU-MOSEI and the three-modality UR-Funny;
  BalanceBenchmark's M-modality port uses the opposite sign,
  exp(M / (M - 1) · (s_m - mean_k s_k)), under which a modality that
  falls behind its running ratio is slowed further (the deviations grow
  instead of shrinking);
- η - r is capped at 7 as in the official UR-Funny branch and
  BalanceBenchmark (the official CREMA-D branch caps it at 10, the other
  branches not at all);
- the coefficient scales every trainable variable of the encoder. The
  official code instead scales, with a backward hook, the gradient that
  reaches each response φ_m (its fused output is Σ_m φ_m), and that
  gradient reaches the encoders through the coalitions' forward passes
  as well as the full one;
  BalanceBenchmark scales the encoders' gradients as here but skips 1-D
  parameters (biases, normalisation scales). The clipping of all
  gradients to a norm of 1 or 5 when the fused head's weight gradient
  leaves [-1, 1] or [-5, 5] (official code, BalanceBenchmark) is not done;
- the running mean counts the steps since training began (the global
  step, saved with the model), as the official `iteration`.
"""

import itertools
import math

import keras
from keras import ops

from keras_olm.balancers.base import ModalityBalancer
from keras_olm.balancers.common import EpochWindow
from keras_olm.layers.base import FUSED

# --- the math, as pure functions -----------------------------------------


def coalitions(modalities):
    """Every proper, non-empty subset of `modalities`, as tuples in order
    (the coalitions whose responses a step must measure)."""
    modalities = list(modalities)
    return [
        subset
        for size in range(1, len(modalities))
        for subset in itertools.combinations(modalities, size)
    ]


def shapley_responses(values, modalities):
    """The mono-modal responses φ_m: Shapley values of the game `values`.

    Args:
        values: dict from a tuple of modalities (in `modalities` order) to
            that coalition's output; the empty coalition may be missing
            (then it is 0) and the full one must be there.
        modalities: list of str.

    Returns:
        A dict from modality to φ_m, shaped as the outputs.
    """
    modalities = list(modalities)
    n = len(modalities)

    def value(subset):
        key = tuple(m for m in modalities if m in subset)
        if not key and key not in values:
            return 0.0
        return values[key]

    out = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        total = 0.0
        for size in range(n):
            # Shapley weight |S|! (|M| - |S| - 1)! / |M|! (mono-modal
            # response; equation number unconfirmed)
            weight = (
                math.factorial(size)
                * math.factorial(n - size - 1)
                / math.factorial(n)
            )
            for subset in itertools.combinations(others, size):
                total = total + weight * (
                    value(set(subset) | {m}) - value(set(subset))
                )
        out[m] = total
    return out


def mono_scores(y, responses):
    """s_m: the mean cross-entropy of each response, probabilities
    clamped at `1e-8` (the official code's floor).

    Args:
        y: int tensor `(batch,)`.
        responses: list of tensors `(batch, num_classes)`.

    Returns:
        A tensor `(M,)`.
    """
    scores = []
    for z in responses:
        z = ops.convert_to_tensor(z, "float32")
        onehot = ops.one_hot(ops.cast(y, "int32"), ops.shape(z)[-1])
        p = ops.sum(ops.softmax(z, axis=-1) * onehot, axis=-1)
        scores.append(ops.mean(-ops.log(ops.maximum(p, 1e-8))))
    return ops.stack(scores)


def agm_coefficients(scores, running_scores, alpha, cap=7.0):
    """k_m = exp(α · min(η_m - r_m, cap)) from the scores and their
    running means.

    Args:
        scores: tensor `(M,)`. This step's mono scores s_m.
        running_scores: tensor `(M,)`. Their running means ŝ_m (before
            this step).
        alpha: float. The modulation strength α.
        cap: float. Upper bound of η - r. Defaults to `7.0`.

    Returns:
        `(coefficients, ratios, running_ratios)`, each `(M,)`.
    """
    scores = ops.convert_to_tensor(scores, "float32")
    running_scores = ops.convert_to_tensor(running_scores, "float32")
    m = scores.shape[0]
    factor = m / (m - 1)
    # ratio r_m and its running counterpart η_m (equation numbers
    # unconfirmed; the sign is the official code's, see the module
    # docstring)
    ratios = ops.exp(factor * (ops.mean(scores) - scores))
    running = ops.exp(factor * (ops.mean(running_scores) - running_scores))
    # coefficient k_m = exp(α · min(η_m - r_m, cap))
    coefficients = ops.exp(alpha * ops.minimum(running - ratios, cap))
    return coefficients, ratios, running


# --- the layer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class AGM(ModalityBalancer):
    """AGM: per-modality gradient coefficients from Shapley mono scores.

    The model trains on the fused head's cross-entropy (unimodal heads are
    linear probes). Every step measures the fused logits with each proper
    subset of the modalities (the others' inputs zeroed, through the
    step's `forward` hook), takes each modality's Shapley response and
    its cross-entropy s_m, and multiplies the gradients of modality m's
    encoder by k_m = exp(α · min(η_m - r_m, 7)) (see the module
    docstring), in the epochs `[modulation_starts, modulation_ends]`
    counted with `steps_per_epoch` as in `OGMGE`. The running mean scores,
    the last coefficients and scores and the step counter are
    non-trainable variables, saved with the model; logged as
    `<modality>_agm_coef` and `<modality>_agm_score`. AGM takes no
    `head_stopping`: its modality heads are linear probes whose losses
    never reach the encoders.

    Args:
        alpha: float. The modulation strength α (the official code's
            `alpha`; it is tuned per dataset). Defaults to `1.0`.
        modulation_starts: int. First epoch of modulation. Defaults to `0`.
        modulation_ends: int or `None`. Last epoch of modulation
            (inclusive); `None` for no end. Defaults to `None`.
        steps_per_epoch: int or `None`. Steps per epoch for the window;
            `None` modulates every step. Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.balancers.AGM(alpha=1.0),
    )
    model.compile(optimizer="sgd")
    model.fit({"audio": xa, "visual": xv}, y, epochs=10)
    ```

    References:
        - [Li et al., 2023](https://arxiv.org/abs/2308.07686)
    """

    detach_unimodal_heads = True
    accepts_head_stopping = False
    transforms_gradients = True

    def __init__(
        self,
        alpha=1.0,
        modulation_starts=0,
        modulation_ends=None,
        steps_per_epoch=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if float(alpha) < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        self.window = EpochWindow(
            modulation_starts, modulation_ends, steps_per_epoch
        )
        self.alpha = float(alpha)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        m = (len(self.modalities),)
        self.running_scores = self.add_state("running_scores", shape=m)
        self.scores = self.add_state("scores", shape=m)
        self.coefficients = self.add_state("coefficients", 1.0, shape=m)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def responses(self, step):
        """The mono-modal responses φ_m of a step, in modality order."""
        if step.forward is None or step.inputs is None:
            raise ValueError(
                "AGM needs the step's inputs and its `forward` hook "
                "(StepRecord.inputs, StepRecord.forward)."
            )
        values = {
            tuple(self.modalities): ops.convert_to_tensor(step.logits[FUSED])
        }
        for subset in coalitions(self.modalities):
            altered = {
                m: x if m in subset else ops.zeros_like(x)
                for m, x in step.inputs.items()
            }
            values[subset] = ops.convert_to_tensor(step.forward(altered)[FUSED])
        phi = shapley_responses(values, self.modalities)
        return [phi[m] for m in self.modalities]

    def transform_gradients(self, grads, variables, groups, step):
        scores = mono_scores(step.y, self.responses(step))
        coefficients, _, _ = agm_coefficients(
            scores, self.running_scores.value, self.alpha
        )
        steps = self.steps.value + 1
        t = ops.cast(steps, "float32")
        # running mean ŝ_m(t), updated after k_m is computed (as the
        # official code)
        running = self.running_scores.value * (t - 1.0) / t + scores / t
        active = self.window.contains(self.steps.value)
        coefficients = ops.where(
            active, coefficients, ops.ones_like(coefficients)
        )
        grads = self.scale_modality_gradients(grads, groups, coefficients)
        return grads, [
            (self.running_scores, running),
            (self.scores, scores),
            (self.coefficients, coefficients),
            (self.steps, steps),
        ]

    def step_logs(self):
        logs = {}
        for i, m in enumerate(self.modalities):
            logs[f"{m}_agm_coef"] = self.coefficients.value[i]
            logs[f"{m}_agm_score"] = self.scores.value[i]
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            modulation_starts=self.window.starts,
            modulation_ends=self.window.ends,
            steps_per_epoch=self.window.steps_per_epoch,
        )
        return config


__all__ = [
    "AGM",
    "agm_coefficients",
    "coalitions",
    "mono_scores",
    "shapley_responses",
]
