"""Online Logit Modulation (Zong et al., IJCAI 2024).

Every head h (one per modality plus the fused head, Eq. 5) gets a scalar
logit coefficient w_h. The training loss of head h is the cross-entropy of
its modulated logits w_h * s_h, so w_h sets how hard that head (and the
encoder under it) is pushed. After every step the coefficients move so that
each head's modulated logit norm w_h * ||s_h|| tracks a target set by the
head's generalization and convergence rates (L_ho: the loss on held-out
training data, the paper's L_dev):

    G_h = L_ho,h(Θ0) - L_ho,h(Θn)                                 (Eq. 6)
    C_h = (L_train,h(Θ0) - L_train,h(Θn)) - G_h                   (Eq. 7)
    λ   = softmax over heads of G_h / C_h                         (Eq. 8)
    L_logit = Σ_h | w_h ||s_h|| - λ_h s̄ |                        (Eq. 9)

and w is moved down the gradient of L_logit (Algorithm 1): the default
coefficient law `LogitLossDescent` takes one Adam step on the analytic
gradient of Eq. 9 per training step, rescales the coefficients to mean 1
and clips them to [0.1, 10].

Integrating L_logit has no fixed point once the network adapts: a head
whose coefficient falls grows its raw logits ||s_h|| and keeps w_h ||s_h||
where it was, so the gradient keeps pushing w_h the same way until a clip
bound stops it. On long runs the coefficients therefore end at or near the
bounds: the fused head's large, the modality heads' small. Under Adam a
coefficient acts as the inverse temperature of its head's softmax, so the
modality heads keep a soft, still-fitting loss while the fused head's
loss saturates. The other coefficient law, `ClosedForm`, sets the
coefficients from λ directly, w_h = (H λ_h)^strength, and with strength 0
switches the modulation off.

Head stopping (`HeadStopping`, on by default) reads the same held-out
losses as Eq. 6 for a different purpose: a modality head whose held-out
loss has stopped improving stops sending gradient into its encoder, for
good, and goes on as a linear probe. OLM's default is the paper's
modulation (Eq. 6-9, Algorithm 1's descent) with the per-head losses of
Eq. 5 stopped per head by the generalization its held-out losses show.

The paper leaves choices open; each is a field of one of OLM's parts
(`HeldOutSchedule`, `RateEstimate`, `Rebalancing`, `ClosedForm` or
`LogitLossDescent`, `HeadStopping`). `OLM.paper()` follows Eq. 6-9 and
Algorithm 1 as printed, and `OLM.authors()` reproduces the authors' code.
See the README section "OLM: the open choices" for the measurements
behind the defaults.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_olm.balancers.base import Balancer
from keras_olm.balancers.base import HeldOutSchedule
from keras_olm.balancers.common import check_choice
from keras_olm.balancers.common import cross_entropy
from keras_olm.balancers.head_stopping import stopping_step

OPTIMIZERS = ("sgd", "adam")
TARGETS = ("preserve", "faithful")
RATE_FORMS = ("code", "paper")

#: The rows of `OLM.state`, one entry per head each.
STATE_ROWS = (
    "coefficients",
    "lambdas",
    "norms",
    "train_losses",
    "held_out_losses",
    "reference_train_losses",
    "reference_held_out_losses",
    "adam_m",
    "adam_v",
)
#: The entries of `OLM.counters`.
COUNTERS = ("steps", "held_out_steps")


# --- the math of Eq. 6-9, as pure functions ------------------------------


def _tensors(*values):
    return [ops.convert_to_tensor(v, "float32") for v in values]


def rates(theta0_train, theta0_held_out, train, held_out, form="code"):
    """Generalization and convergence rates of every head (Eq. 6-7).

    Args:
        theta0_train: tensor `(num_heads,)`. Training losses at Θ0.
        theta0_held_out: tensor `(num_heads,)`. Held-out losses at Θ0.
        train: tensor `(num_heads,)`. Training losses at Θn.
        held_out: tensor `(num_heads,)`. Held-out losses at Θn.
        form: str. `"code"`: the authors' signed form,
            G = ho0 - ho, C = (train0 - train) - G. `"paper"`: the
            absolute values of Eq. 6-7, G = |ho0 - ho|,
            C = ||ho - train| - |ho0 - train0|| (ho: held-out losses).
            Defaults to `"code"`.

    Returns:
        `(G, C)`, two tensors of shape `(num_heads,)`.
    """
    theta0_train, theta0_held_out, train, held_out = _tensors(
        theta0_train, theta0_held_out, train, held_out
    )
    if form == "code":
        g = theta0_held_out - held_out
        c = (theta0_train - train) - g
    elif form == "paper":
        g = ops.abs(theta0_held_out - held_out)
        c = ops.abs(
            ops.abs(held_out - train) - ops.abs(theta0_held_out - theta0_train)
        )
    else:
        raise ValueError(f"form must be one of {RATE_FORMS}; got {form!r}")
    return g, c


def rebalancing_factors(g, c, temperature=1.0, eps=1e-6):
    """Rebalancing factors λ from the rates (Eq. 8).

    The ratio r_h = max(G_h, eps) / max(C_h, eps) is what Eq. 8 feeds to the
    softmax. When a head's C is near 0 (its train and held-out losses fall
    together, as for a fast, dominant modality early on) r_h is huge and the
    softmax is one-hot: that head takes all the target magnitude and the
    others are driven to zero (measured in the spec). With a `temperature`,
    the ratios are first normalised to shares q = r / Σ r in [0, 1], and
    λ = softmax(q / temperature): the largest possible ratio between two
    heads' λ is then exp(1 / temperature), whatever C does.

    Args:
        g: tensor `(num_heads,)`. Generalization rates.
        c: tensor `(num_heads,)`. Convergence rates.
        temperature: float or `None`. `None` is the raw Eq. 8 (the
            authors' behaviour, one-hot when a C is ~0). Defaults to 1.
        eps: float. The clamp of G and C. Defaults to `1e-6`.

    Returns:
        λ, a tensor `(num_heads,)` that sums to 1.
    """
    g, c = _tensors(g, c)
    ratio = ops.maximum(g, eps) / ops.maximum(c, eps)
    if temperature is None:
        return ops.softmax(ratio)
    share = ratio / ops.sum(ratio)
    return ops.softmax(share / temperature)


def logit_targets(norms, lambdas, mode="preserve"):
    """Target logit magnitudes λ_h · s̄ of Eq. 9, detached.

    Args:
        norms: tensor `(num_heads,)`. Modulated norms w_h · mean ||s_h||.
        lambdas: tensor `(num_heads,)`. Rebalancing factors.
        mode: str. `"faithful"`: s̄ is the mean norm over heads, as the
            paper writes; since λ sums to 1 the targets then sum to the
            mean, not the total, and minimising L_logit shrinks every
            coefficient over time. `"preserve"`: s̄ is the sum of the
            norms, so the targets sum to the current total and only the
            split between heads changes. Defaults to `"preserve"`.

    Returns:
        A tensor `(num_heads,)`.
    """
    norms, lambdas = _tensors(norms, lambdas)
    if mode == "faithful":
        total = ops.mean(norms)
    elif mode == "preserve":
        total = ops.sum(norms)
    else:
        raise ValueError(f"targets must be one of {TARGETS}; got {mode!r}")
    return ops.stop_gradient(lambdas * total)


def closed_form_coefficients(lambdas, strength=1.0):
    """Coefficients set from λ directly: w_h = (H · λ_h)^strength.

    H is the number of heads, so w ≡ 1 when λ is uniform; a head with a
    larger share of the target magnitude of Eq. 9 gets a larger
    coefficient. Nothing is integrated: w follows λ and stops moving when
    λ does, and the network cannot push w by rescaling its logits (w does
    not read the logit norms). With the default λ temperature of 1 and
    three heads, H · λ_h lies in [0.64, 1.73].

    Args:
        lambdas: tensor `(num_heads,)`. Rebalancing factors (Eq. 8).
        strength: float. The exponent; 0 switches the modulation off,
            and a negative value reverses its direction (the head with the
            largest λ gets the smallest coefficient). Defaults to `1.0`.

    Returns:
        A tensor `(num_heads,)`.
    """
    lambdas = _tensors(lambdas)[0]
    num_heads = ops.cast(ops.shape(lambdas)[0], "float32")
    return ops.power(num_heads * lambdas, strength)


def logit_loss(coefficients, mean_norms, targets):
    """L_logit = Σ_h |w_h · mean ||s_h|| - t_h| (Eq. 9)."""
    coefficients, mean_norms, targets = _tensors(
        coefficients, mean_norms, targets
    )
    return ops.sum(ops.abs(coefficients * mean_norms - targets))


def logit_loss_gradient(coefficients, mean_norms, targets):
    """dL_logit / dw_h = sign(w_h n_h - t_h) · n_h, targets detached."""
    coefficients, mean_norms, targets = _tensors(
        coefficients, mean_norms, targets
    )
    return ops.sign(coefficients * mean_norms - targets) * mean_norms


def cross_entropy_gradient(coefficient, logits, y):
    """d CE(w · s, y) / dw for one head, averaged over the batch.

    CE = -log softmax(w s)_y, so dCE/dw = Σ_c (p_c - 1[c = y]) s_c with
    p = softmax(w s). Used when the coefficients also follow the
    cross-entropy, as in the authors' code.
    """
    logits = _tensors(logits)[0]
    probs = ops.softmax(coefficient * logits, axis=-1)
    onehot = ops.one_hot(ops.cast(y, "int32"), ops.shape(logits)[-1])
    return ops.mean(ops.sum((probs - onehot) * logits, axis=-1))


def mean_logit_norm(logits):
    """Batch mean of the per-sample L2 norms of a logit matrix."""
    logits = _tensors(logits)[0]
    return ops.mean(ops.sqrt(ops.sum(ops.square(logits), axis=-1)))


def _mean_logit_norms(logits):
    """`mean_logit_norm` of every head's logits, `(num_heads,)`, detached."""
    # Every head gives (batch, num_classes): one pass over the stack.
    stacked = ops.cast(ops.stop_gradient(ops.stack(logits)), "float32")
    return ops.mean(ops.sqrt(ops.sum(ops.square(stacked), axis=-1)), axis=-1)


# --- the parts of OLM's constructor ---------------------------------------


def _range(coefficient_range):
    """`coefficient_range` checked, as a tuple of two floats or `None`."""
    if coefficient_range is None:
        return None
    low, high = coefficient_range
    if not 0 <= low < high:
        raise ValueError(
            "coefficient_range must be (low, high) with 0 <= low < high; "
            f"got {coefficient_range}"
        )
    return (float(low), float(high))


def _momentum(name, value):
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return float(value)


class _Part:
    """Config round trip of the frozen dataclasses below."""

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _set(self, name, value):
        object.__setattr__(self, name, value)


@keras.saving.register_keras_serializable(package="keras_olm")
@dataclasses.dataclass(frozen=True)
class RateEstimate(_Part):
    """How OLM measures the rates G and C of Eq. 6-7.

    Args:
        form: str. `"code"` (signed, the authors' code) or `"paper"` (the
            absolute values of Eq. 6-7); see `rates`. Defaults to
            `"code"`.
        loss_momentum: float in [0, 1). The train and held-out losses that
            enter G and C are exponential moving averages with this
            momentum (single batches are noisy), started at the first
            measurement; 0 uses each batch's loss as the authors do.
            Defaults to `0.9`.
        warmup_steps: int. For this many steps the Θ0 reference losses keep
            being overwritten by the current ones and λ stays uniform (the
            authors' code does this for the whole first epoch). With 0 the
            reference is the first measurement, taken before any update.
            Defaults to `0`.
        eps: float. Clamp of G and C in Eq. 8. Defaults to `1e-6`.
    """

    form: str = "code"
    loss_momentum: float = 0.9
    warmup_steps: int = 0
    eps: float = 1e-6

    def __post_init__(self):
        check_choice("rate_form", self.form, RATE_FORMS)
        momentum = _momentum("loss_momentum", self.loss_momentum)
        self._set("loss_momentum", momentum)
        if int(self.warmup_steps) < 0:
            raise ValueError(
                f"warmup_steps must be >= 0; got {self.warmup_steps}"
            )
        self._set("warmup_steps", int(self.warmup_steps))
        self._set("eps", float(self.eps))


@keras.saving.register_keras_serializable(package="keras_olm")
@dataclasses.dataclass(frozen=True)
class Rebalancing(_Part):
    """How OLM turns the rates into the rebalancing factors λ (Eq. 8).

    Args:
        temperature: float > 0 or `None`. Softens Eq. 8 (see
            `rebalancing_factors`); `None` is the raw softmax of G / C.
            Defaults to `1.0`.
        momentum: float in [0, 1). λ is an exponential moving average with
            this momentum, moved on held-out steps only (λ on a slower
            clock); 0 uses each step's λ. Defaults to `0.9`.
    """

    temperature: float = 1.0
    momentum: float = 0.9

    def __post_init__(self):
        if self.temperature is not None:
            if not float(self.temperature) > 0:
                raise ValueError(
                    "lambda_temperature must be > 0 or None; got "
                    f"{self.temperature}"
                )
            self._set("temperature", float(self.temperature))
        self._set("momentum", _momentum("lambda_momentum", self.momentum))


@keras.saving.register_keras_serializable(package="keras_olm")
@dataclasses.dataclass(frozen=True)
class ClosedForm(_Part):
    """Coefficient law: w_h = (H λ_h)^strength after every step.

    Nothing is integrated (`closed_form_coefficients`): the coefficients
    follow λ, settle when λ does and stay between
    (H / (e + H - 1))^strength and (H e / (e + H - 1))^strength with λ
    temperature 1 (for three heads and strength -2, [0.33, 2.47]).

    Args:
        strength: float. The exponent; 0 is no modulation (every
            coefficient 1), positive gives the head with the largest λ
            the largest coefficient (the paper's direction), negative the
            smallest. Defaults to `0.0`.
        coefficient_range: tuple of two floats, or `None`. Coefficients
            are clipped into this range after every update; `None` for no
            clipping. Defaults to `(0.1, 10.0)`.
    """

    strength: float = 0.0
    coefficient_range: tuple = (0.1, 10.0)

    def __post_init__(self):
        self._set("strength", float(self.strength))
        self._set("coefficient_range", _range(self.coefficient_range))


@keras.saving.register_keras_serializable(package="keras_olm")
@dataclasses.dataclass(frozen=True)
class LogitLossDescent(_Part):
    """Coefficient law: one optimizer step down L_logit (Eq. 9, Alg. 1).

    OLM's default. On long runs the coefficients run to or near the clip
    bounds (see the module docstring).

    Args:
        optimizer: str. `"sgd"` as in Algorithm 1, or `"adam"` as in the
            authors' code (on the analytic gradient of L_logit, so no
            second Keras optimizer is needed). Adam's steps do not depend
            on the logits' scale; SGD's are proportional to the logit
            norms. Defaults to `"adam"`.
        learning_rate: float. Step size of the coefficient optimizer (η
            of Algorithm 1). Defaults to `1e-3`.
        coefficient_ce_grad: bool. Whether the coefficients also follow the
            gradient of the cross-entropy of their head, as in the authors'
            code (they are parameters of a second optimizer there). The
            paper's Algorithm 1 only names L_logit. Defaults to `False`.
        targets: str. `"preserve"` (targets sum to the total norm) or
            `"faithful"` (targets sum to the mean norm, as Eq. 9 writes;
            all coefficients then shrink over time). See `logit_targets`.
            Defaults to `"preserve"`.
        mean_one: bool. Rescale the coefficients after every update so
            that their mean is 1: OLM then only redistributes magnitude
            between heads. Without it the coefficients drift as a whole
            (the network rescales its logits to undo any coefficient, so
            L_logit never pins their overall scale). Defaults to `True`.
        coefficient_range: tuple of two floats, or `None`. Coefficients
            are clipped into this range after every update; `None` for no
            clipping. Defaults to `(0.1, 10.0)`.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    coefficient_ce_grad: bool = False
    targets: str = "preserve"
    mean_one: bool = True
    coefficient_range: tuple = (0.1, 10.0)

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("targets", self.targets, TARGETS)
        if not float(self.learning_rate) > 0:
            raise ValueError(
                f"learning_rate must be > 0; got {self.learning_rate}"
            )
        self._set("learning_rate", float(self.learning_rate))
        self._set("coefficient_ce_grad", bool(self.coefficient_ce_grad))
        self._set("mean_one", bool(self.mean_one))
        self._set("coefficient_range", _range(self.coefficient_range))


#: The coefficient laws `OLM(coefficient_law=...)` takes.
COEFFICIENT_LAWS = (ClosedForm, LogitLossDescent)


def _part(name, value, kinds):
    """`value` as one of the classes `kinds`: deserialized from a config
    dict, or checked."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{name} must be a {names}; got {value!r}")
    return value


# --- the layer ------------------------------------------------------------


def _state_row(name, doc):
    """A read-only property: row `name` of the layer's `state` variable."""
    index = STATE_ROWS.index(name)
    return property(lambda self: self.state.value[index], doc=doc)


@keras.saving.register_keras_serializable(package="keras_olm")
class OLM(Balancer):
    """Online Logit Modulation: per-head logit coefficients solved online.

    Each head h (every modality's classifier and the fused one) trains on
    the cross-entropy of w_h · s_h. After every step, from the per-head
    training losses and the per-head losses on a held-out batch, OLM
    computes the rates G and C (Eq. 6-7), the factors λ (Eq. 8), and the
    coefficients from λ (`coefficient_law`: the closed form, or one
    optimizer step down L_logit of Eq. 9 as Algorithm 1). All state lives
    in two non-trainable variables that are updated with `assign` inside
    the compiled train step, so the same code runs on TensorFlow, JAX and
    PyTorch and is saved with the model: `state`, one row per quantity of
    `STATE_ROWS` (coefficients, λ, norms, running and Θ0 losses, Adam's
    moments; each is also a read-only attribute, e.g. `olm.coefficients`),
    and `counters` (`olm.steps`, `olm.held_out_steps`). Head stopping
    keeps its own state (`olm.head_stopping`).

    By default the coefficients follow Algorithm 1: one Adam step down
    L_logit (Eq. 9) per training step, rescaled to mean 1 and clipped to
    [0.1, 10] (`LogitLossDescent()`), and every modality head stops
    training its encoder once its held-out loss has stopped improving
    (`HeadStopping()`, 40 steps). `ClosedForm(strength=0)` keeps every
    coefficient at 1 (no modulation: the per-head losses with head
    stopping). `OLM.paper()` is Eq. 6-9 and Algorithm 1 as the
    paper prints them; `OLM.authors()` reproduces the authors' code,
    including its collapse (λ one-hot, coefficients to 0) on imbalanced
    problems.

    Args:
        held_out: `HeldOutSchedule` or `None`. Where the held-out losses
            come from. `None` (the default) is `HeldOutSchedule()`: one
            held-out batch every 20 steps.
        rate_estimate: `RateEstimate` or `None`. The rates of Eq. 6-7:
            their form, the running losses' momentum, the Θ0 warmup and
            the clamp. `None` (the default) is `RateEstimate()`.
        rebalancing: `Rebalancing` or `None`. λ of Eq. 8: its softmax
            temperature and momentum. `None` (the default) is
            `Rebalancing()`.
        coefficient_law: `ClosedForm`, `LogitLossDescent` or `None`. How
            the coefficients follow λ. `None` (the default) is
            `LogitLossDescent()`: Adam on L_logit, mean 1, clipped to
            [0.1, 10].
        head_stopping: `HeadStopping`, `True` for `HeadStopping()`, or
            `None` (every head's loss always reaches its encoder, as in
            the paper). Defaults to `True`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.OLM(),
    )
    model.compile(optimizer="adam")
    model.fit(train_ds, held_out_data=held_out_ds, epochs=10)

    # The same without modulation (every coefficient 1):
    unmodulated = keras_olm.OLM(
        coefficient_law=keras_olm.balancers.ClosedForm(strength=0.0)
    )
    ```

    References:
        - [Zong et al., 2024](https://www.ijcai.org/proceedings/2024/636)
    """

    needs_held_out = True
    measures_steps = True

    def __init__(
        self,
        held_out=None,
        rate_estimate=None,
        rebalancing=None,
        coefficient_law=None,
        head_stopping=True,
        **kwargs,
    ):
        super().__init__(head_stopping=head_stopping, **kwargs)
        held_out = held_out or HeldOutSchedule()
        rate_estimate = rate_estimate or RateEstimate()
        rebalancing = rebalancing or Rebalancing()
        coefficient_law = coefficient_law or LogitLossDescent()
        self.held_out = _part("held_out", held_out, (HeldOutSchedule,))
        self.set_held_out_schedule(self.held_out.schedule, self.held_out.every)
        self.rate_estimate = _part(
            "rate_estimate", rate_estimate, (RateEstimate,)
        )
        self.rebalancing = _part("rebalancing", rebalancing, (Rebalancing,))
        self.coefficient_law = _part(
            "coefficient_law", coefficient_law, COEFFICIENT_LAWS
        )

    @classmethod
    def paper(cls, learning_rate=1e-3, **kwargs):
        """OLM as the paper prints it (Eq. 6-9, Algorithm 1).

        A held-out batch (the paper's L_dev) every step, so that every
        iteration n has its L_train and L_dev (Algorithm 1's input);
        Θ0 the first measurement, before any update; each step's raw
        losses; G and C with the absolute values of Eq. 6-7; λ the raw
        softmax of G / C (Eq. 8); the targets λ_h s̄ with s̄ the mean of
        the modulated norms (Eq. 9); one SGD step of learning rate η down
        L_logit alone per step, the coefficients starting at 1 and
        neither rescaled nor clipped (Algorithm 1); no head stopping.

        Args:
            learning_rate: float. η of Algorithm 1 (the paper gives no
                value). Defaults to `1e-3`.
            **kwargs: overrides of any constructor argument.
        """
        return cls._every_step_descent(
            "paper", 0, "sgd", learning_rate, False, **kwargs
        )

    @classmethod
    def authors(cls, steps_per_epoch, learning_rate=1e-3, **kwargs):
        """OLM exactly as the authors' code runs it.

        A held-out batch every step; Adam on the coefficients, which also
        follow the cross-entropy; faithful targets; the raw softmax of
        G / C; no clipping; each batch's raw loss; Θ0 overwritten during
        the whole first epoch. On imbalanced problems λ goes one-hot and
        the coefficients of the other heads go to 0 (see the README); it
        is here for comparison.

        Args:
            steps_per_epoch: int. Steps in one epoch (the reference window).
            learning_rate: float. Adam's step size on the coefficients.
                Defaults to `1e-3`, the authors'.
            **kwargs: overrides of any constructor argument.
        """
        return cls._every_step_descent(
            "code", int(steps_per_epoch), "adam", learning_rate, True, **kwargs
        )

    @classmethod
    def _every_step_descent(
        cls, form, warmup_steps, optimizer, learning_rate, ce_grad, **kwargs
    ):
        """The presets' shared settings: a held-out batch every step, each
        step's raw losses, the raw softmax of Eq. 8, faithful targets, the
        coefficients neither rescaled nor clipped, no head stopping."""
        config = dict(
            held_out=HeldOutSchedule(schedule="step"),
            rate_estimate=RateEstimate(
                form=form, loss_momentum=0.0, warmup_steps=warmup_steps
            ),
            rebalancing=Rebalancing(temperature=None, momentum=0.0),
            coefficient_law=LogitLossDescent(
                optimizer=optimizer,
                learning_rate=learning_rate,
                coefficient_ce_grad=ce_grad,
                targets="faithful",
                mean_one=False,
                coefficient_range=None,
            ),
            head_stopping=None,
        )
        config.update(kwargs)
        return cls(**config)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        initial = np.zeros((len(STATE_ROWS), self.num_heads), "float32")
        initial[STATE_ROWS.index("coefficients")] = 1.0
        initial[STATE_ROWS.index("lambdas")] = 1.0 / self.num_heads
        # Two variables, not one per quantity: every variable costs a
        # `where` and an `assign` in the step (dispatched eagerly under
        # torch).
        self.state = self.add_weight(
            name="state",
            shape=initial.shape,
            initializer=lambda shape, dtype: ops.convert_to_tensor(
                initial, dtype
            ),
            trainable=False,
        )
        self.counters = self.add_state(
            "counters", 0, shape=(len(COUNTERS),), dtype="int32"
        )

    coefficients = _state_row("coefficients", "Coefficients w_h, `(H,)`.")
    lambdas = _state_row("lambdas", "Rebalancing factors λ (Eq. 8), `(H,)`.")
    norms = _state_row(
        "norms", "Modulated logit norms w_h · mean ||s_h||, `(H,)`."
    )
    train_losses = _state_row(
        "train_losses", "Running training losses L_train(Θn), `(H,)`."
    )
    held_out_losses = _state_row(
        "held_out_losses", "Running held-out losses L_ho(Θn), `(H,)`."
    )
    reference_train_losses = _state_row(
        "reference_train_losses", "Training losses at Θ0, `(H,)`."
    )
    reference_held_out_losses = _state_row(
        "reference_held_out_losses", "Held-out losses at Θ0, `(H,)`."
    )
    adam_m = _state_row("adam_m", "Adam's first moments, `(H,)`.")
    adam_v = _state_row("adam_v", "Adam's second moments, `(H,)`.")

    @property
    def steps(self):
        """Steps measured so far (int scalar)."""
        return self.counters.value[0]

    @property
    def held_out_steps(self):
        """Steps that measured a held-out batch so far (int scalar)."""
        return self.counters.value[1]

    def modulate(self, logits):
        w = ops.stop_gradient(self.coefficients)
        return {h: w[i] * logits[h] for i, h in enumerate(self.head_names)}

    def update(self, step):
        state, counters = self.state.value, self.counters.value
        old = dict(zip(STATE_ROWS, ops.unstack(state)))
        rate = self.rate_estimate
        steps = counters[0] + 1
        has_held_out = step.held_out_flag > 0
        held_out_steps = counters[1] + ops.cast(has_held_out, "int32")
        warm = steps <= rate.warmup_steps

        # Running losses: an EMA, started at the first measurement.
        m = rate.loss_momentum
        train = ops.where(
            steps == 1,
            step.head_losses,
            m * old["train_losses"] + (1 - m) * step.head_losses,
        )
        held_out = ops.where(
            held_out_steps == 1,
            step.held_out_losses,
            m * old["held_out_losses"] + (1 - m) * step.held_out_losses,
        )
        held_out = ops.where(has_held_out, held_out, old["held_out_losses"])

        # Θ0 references: the first measurement, or every one in warmup.
        ref_train = ops.where(
            ops.logical_or(steps == 1, warm),
            train,
            old["reference_train_losses"],
        )
        ref_held_out = ops.where(
            ops.logical_and(
                has_held_out, ops.logical_or(held_out_steps == 1, warm)
            ),
            held_out,
            old["reference_held_out_losses"],
        )

        # Eq. 6-8; uniform until the first held-out measurement after
        # warmup (before that G and C are 0 by construction).
        g, c = rates(ref_train, ref_held_out, train, held_out, rate.form)
        lambdas = rebalancing_factors(
            g, c, self.rebalancing.temperature, rate.eps
        )
        ready = ops.logical_and(ops.logical_not(warm), held_out_steps > 1)
        lambdas = ops.where(ready, lambdas, 1.0 / self.num_heads)
        if self.rebalancing.momentum > 0:
            # λ on a slower clock: an EMA, moved on held-out steps only.
            k = self.rebalancing.momentum
            smoothed = k * old["lambdas"] + (1 - k) * lambdas
            lambdas = ops.where(
                ops.logical_and(ready, has_held_out),
                smoothed,
                ops.where(ready, old["lambdas"], lambdas),
            )

        w = old["coefficients"]
        mean_norms = _mean_logit_norms(
            [step.logits[h] for h in self.head_names]
        )
        law = self.coefficient_law
        if isinstance(law, ClosedForm):
            new_w = closed_form_coefficients(lambdas, law.strength)
            moments = {}
        else:
            new_w, moments = self._logit_loss_step(
                w, mean_norms, lambdas, steps, old, step
            )
        if law.coefficient_range is not None:
            new_w = ops.clip(new_w, *law.coefficient_range)
        return self._new_state(
            old,
            steps,
            held_out_steps,
            coefficients=new_w,
            lambdas=lambdas,
            norms=new_w * mean_norms,
            train_losses=train,
            held_out_losses=held_out,
            reference_train_losses=ref_train,
            reference_held_out_losses=ref_held_out,
            **moments,
        )

    def _logit_loss_step(self, w, mean_norms, lambdas, steps, old, step):
        """Eq. 9 and one optimizer step of Algorithm 1.

        Returns:
            The new coefficients (before clipping) and the optimizer's new
            moments as `{"adam_m": ..., "adam_v": ...}`.
        """
        law = self.coefficient_law
        targets = logit_targets(w * mean_norms, lambdas, law.targets)
        grad = logit_loss_gradient(w, mean_norms, targets)
        if law.coefficient_ce_grad:
            grad = grad + ops.stack(
                [
                    cross_entropy_gradient(
                        w[i], ops.stop_gradient(step.logits[h]), step.y
                    )
                    for i, h in enumerate(self.head_names)
                ]
            )
        new_w, adam_m, adam_v = self._optimizer_step(
            w, grad, steps, old["adam_m"], old["adam_v"]
        )
        if law.mean_one:
            new_w = new_w * (self.num_heads / ops.sum(new_w))
        return new_w, {"adam_m": adam_m, "adam_v": adam_v}

    def _new_state(self, old, steps, held_out_steps, **rows):
        """The `(variable, value)` pairs; rows not given keep `old`."""
        new_state = ops.stack(
            [rows.get(name, old[name]) for name in STATE_ROWS]
        )
        new_counters = ops.stack([steps, held_out_steps])
        return [(self.state, new_state), (self.counters, new_counters)]

    def _optimizer_step(self, w, grad, steps, adam_m, adam_v):
        lr = self.coefficient_law.learning_rate
        if self.coefficient_law.optimizer == "sgd":
            return w - lr * grad, adam_m, adam_v
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = b1 * adam_m + (1 - b1) * grad
        v = b2 * adam_v + (1 - b2) * ops.square(grad)
        t = ops.cast(steps, "float32")
        m_hat = m / (1 - ops.power(b1, t))
        v_hat = v / (1 - ops.power(b2, t))
        return w - lr * m_hat / (ops.sqrt(v_hat) + eps), m, v

    def step_logs(self):
        logs = {}
        coefficients, lambdas = self.coefficients, self.lambdas
        for i, h in enumerate(self.head_names):
            logs[f"{h}_coef"] = coefficients[i]
            logs[f"{h}_lambda"] = lambdas[i]
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            held_out=serialize(self.held_out),
            rate_estimate=serialize(self.rate_estimate),
            rebalancing=serialize(self.rebalancing),
            coefficient_law=serialize(self.coefficient_law),
        )
        return config


__all__ = [
    "OLM",
    "ClosedForm",
    "LogitLossDescent",
    "RateEstimate",
    "Rebalancing",
    "closed_form_coefficients",
    "cross_entropy",
    "cross_entropy_gradient",
    "logit_loss",
    "logit_loss_gradient",
    "logit_targets",
    "mean_logit_norm",
    "rates",
    "rebalancing_factors",
    "stopping_step",
]
