"""On-the-fly Gradient Modulation with Generalization Enhancement.

Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022. After the backward pass, the encoder of the
modality that currently explains the labels better (the dominant one) has
its gradient scaled down, and every modulated encoder gradient gets
Gaussian noise with the spread of the unmodulated gradient:

    s_u   = Σ_i softmax(z_u,i)[y_i]                 (score, Eq. 8)
    ρ_u   = s_u / s_v                               (discrepancy, Eq. 9)
    k_u   = 1 - tanh(α · ρ_u)  if ρ_u > 1, else 1   (coefficient, Eq. 10)
    g_u  <- k_u · g_u + ε,  ε ~ N(0, std(g_u)²)     (OGM-GE, Sec. 3.3)

The official code has two coefficient forms: the paper's Eq. 10 and the
code at the time of the paper use `1 - tanh(α · relu(ρ))` on the dominant
modality (so the coefficient jumps from 1 to `1 - tanh(α)` as ρ crosses
1), while later versions of the code use `1 - tanh(α · relu(ρ - 1))`,
which is continuous at ρ = 1. `coefficient_form="shifted"` (the default)
is the continuous one; `"paper"` is Eq. 10 as printed.

Differences from the official code, all documented on the layer:
- the scores s_u come from each modality's own head (this library gives
  every modality a head), not from the split weights of the fused head;
- the noise and the coefficient apply to every trainable variable of the
  modality's encoder (the code: the 4-D convolution kernels only);
- with M > 2 modalities, ρ_u is s_u over the mean score of the others
  (for M = 2 this is the paper's ratio).
"""

import keras
from keras import ops

from keras_olm.balancers.base import ModalityBalancer
from keras_olm.balancers.common import EpochWindow
from keras_olm.balancers.common import check_choice
from keras_olm.balancers.common import discrepancy_ratios
from keras_olm.balancers.common import true_class_scores

COEFFICIENT_FORMS = ("shifted", "paper")


# --- the math of Eq. 8-10, as pure functions -----------------------------


def modulation_coefficients(ratios, alpha, form="shifted"):
    """Gradient coefficients k_u of Eq. 10: < 1 for dominant modalities.

    Args:
        ratios: tensor `(num_modalities,)`. Discrepancy ratios ρ_u.
        alpha: float. The modulation strength α.
        form: str. `"shifted"`: k = 1 - tanh(α · relu(ρ - 1)), continuous
            at ρ = 1 (the later official code). `"paper"`: k =
            1 - tanh(α · ρ) where ρ > 1, else 1 (Eq. 10 as printed and the
            code of the paper's release). Defaults to `"shifted"`.

    Returns:
        A tensor `(num_modalities,)` in (0, 1].
    """
    ratios = ops.convert_to_tensor(ratios, "float32")
    if form == "shifted":
        return 1.0 - ops.tanh(alpha * ops.relu(ratios - 1.0))
    if form == "paper":
        return ops.where(
            ratios > 1.0, 1.0 - ops.tanh(alpha * ops.relu(ratios)), 1.0
        )
    raise ValueError(
        f"coefficient_form must be one of {COEFFICIENT_FORMS}; got {form!r}"
    )


def gradient_std(grad):
    """Unbiased standard deviation of all entries of one gradient.

    This is the spread of the generalization-enhancement noise
    (`torch.Tensor.std()` in the official code, which is unbiased).
    """
    g = ops.reshape(ops.convert_to_tensor(grad), (-1,))
    n = ops.cast(ops.shape(g)[0], g.dtype)
    centred = g - ops.mean(g)
    return ops.sqrt(ops.sum(ops.square(centred)) / ops.maximum(n - 1.0, 1.0))


# --- the layer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class OGMGE(ModalityBalancer):
    """OGM-GE: scale down the dominant modality's encoder gradients.

    Every head trains on its own cross-entropy, as with `"heads"`. After
    the backward pass, the scores of Eq. 8 (the summed true-class
    probability of each modality's head on the batch) give each modality's
    discrepancy ratio (Eq. 9); the encoder gradients of a modality whose
    ratio is above 1 are multiplied by the coefficient of Eq. 10, and with
    `generalization_enhancement` every modulated encoder gradient gets
    zero-mean Gaussian noise whose standard deviation is that of the
    unmodulated gradient (plus `1e-8`), as the official code. The heads'
    gradients are never changed.

    Modulation happens in the window of epochs
    `[modulation_starts, modulation_ends]` (inclusive, as the official
    code), counted from a step counter as `step // steps_per_epoch`. With
    `steps_per_epoch=None` the window is open on every step.

    The state (coefficients, ratios, step counter, the noise seed) lives in
    non-trainable variables assigned inside the compiled step, so it is
    saved with the model and works on JAX. A step with a non-finite loss
    leaves it unchanged.

    Args:
        alpha: float. Modulation strength α of Eq. 10 (the paper tunes it
            per dataset). Defaults to `0.5`.
        coefficient_form: str. `"shifted"`, 1 - tanh(α · relu(ρ - 1)),
            or `"paper"`, 1 - tanh(α · ρ) where ρ > 1 (Eq. 10 as printed);
            see `modulation_coefficients`. Defaults to `"shifted"`.
        generalization_enhancement: bool. Add the Gaussian noise (OGM-GE);
            `False` is plain OGM. Defaults to `True`.
        modulation_starts: int. First epoch of modulation. Defaults to `0`.
        modulation_ends: int or `None`. Last epoch of modulation
            (inclusive); `None` for no end. Defaults to `None`.
        steps_per_epoch: int or `None`. Steps in one epoch, to turn the
            step counter into epochs; `None` keeps modulation on for every
            step (then `modulation_starts` and `modulation_ends` must be
            left at their defaults). Defaults to `None`.
        seed: int or `None`. Seed of the noise generator. Defaults to
            `None`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.balancers.OGMGE(alpha=0.5),
    )
    model.compile(optimizer="sgd")
    model.fit({"audio": xa, "visual": xv}, y, epochs=10)
    ```

    References:
        - [Peng et al., 2022](https://arxiv.org/abs/2203.15332)
    """

    transforms_gradients = True

    def __init__(
        self,
        alpha=0.5,
        coefficient_form="shifted",
        generalization_enhancement=True,
        modulation_starts=0,
        modulation_ends=None,
        steps_per_epoch=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("coefficient_form", coefficient_form, COEFFICIENT_FORMS)
        if float(alpha) < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        self.window = EpochWindow(
            modulation_starts, modulation_ends, steps_per_epoch
        )
        self.alpha = float(alpha)
        self.coefficient_form = coefficient_form
        self.generalization_enhancement = bool(generalization_enhancement)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        m = (len(self.modalities),)
        self.coefficients = self.add_state("coefficients", 1.0, shape=m)
        self.ratios = self.add_state("ratios", 1.0, shape=m)
        self.steps = self.add_state("steps", 0, shape=(), dtype="int32")

    def transform_gradients(self, grads, variables, groups, step):
        scores = ops.stack(
            [true_class_scores(step.y, step.logits[m]) for m in self.modalities]
        )
        ratios = discrepancy_ratios(scores)
        coefficients = modulation_coefficients(
            ratios, self.alpha, self.coefficient_form
        )
        steps = self.steps.value
        active = self.window.contains(steps)
        applied = ops.where(active, coefficients, ops.ones_like(coefficients))
        noise_state = self.seed_generator.state
        # Copies: a torch variable is assigned in place.
        before = ops.copy(noise_state.value)

        def add_noise(g, scaled):
            if not self.generalization_enhancement:
                return scaled
            std = gradient_std(g)
            # A non-finite gradient (a step the training step will not
            # apply) draws finite noise instead of failing in the sampler.
            std = ops.where(ops.isfinite(std), std, ops.zeros_like(std))
            noise = keras.random.normal(
                ops.shape(g),
                stddev=std + 1e-8,
                dtype=g.dtype,
                seed=self.seed_generator,
            )
            return scaled + ops.where(active, noise, ops.zeros_like(noise))

        grads = self.scale_modality_gradients(
            grads, groups, applied, then=add_noise
        )
        # The draws advanced the noise generator. Its new state is returned
        # with the rest of the balancer's, so that a step that is not
        # applied leaves the noise stream where it was.
        drawn = ops.copy(noise_state.value)
        noise_state.assign(before)
        return grads, [
            (self.coefficients, applied),
            (self.ratios, ratios),
            (self.steps, steps + 1),
            (noise_state, drawn),
        ]

    def save_own_variables(self, store):
        # The noise generator's state is no layer weight; saved beside
        # them so that a restored model continues the same noise stream.
        super().save_own_variables(store)
        store["noise_seed"] = self.seed_generator.state

    def load_own_variables(self, store):
        self.check_saved_balancer(store)
        own = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])
        if "noise_seed" in list(store.keys()):
            self.seed_generator.state.assign(store["noise_seed"])

    def step_logs(self):
        logs = {}
        for i, m in enumerate(self.modalities):
            logs[f"{m}_ogm_coef"] = self.coefficients.value[i]
            logs[f"{m}_ogm_ratio"] = self.ratios.value[i]
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            coefficient_form=self.coefficient_form,
            generalization_enhancement=self.generalization_enhancement,
            modulation_starts=self.window.starts,
            modulation_ends=self.window.ends,
            steps_per_epoch=self.window.steps_per_epoch,
            seed=self.seed,
        )
        return config


__all__ = [
    "OGMGE",
    "discrepancy_ratios",
    "gradient_std",
    "modulation_coefficients",
    "true_class_scores",
]
