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

and w is moved down the gradient of L_logit (Algorithm 1;
`coefficient_update="optimizer"`).

Integrating L_logit has no fixed point once the network adapts: a head
whose coefficient falls grows its raw logits ||s_h|| and keeps w_h ||s_h||
where it was, so the gradient keeps pushing w_h the same way until a clip
bound stops it. The default (`coefficient_update="closed_form"`) sets the
coefficients from λ directly, w_h = (H λ_h)^strength, with a negative
strength: under Adam a coefficient acts as the inverse temperature of its
head's softmax, and a large w_h lets the head's loss saturate (the head
stops fitting its training samples) while a small one keeps it fitting.
Eq. 8 gives the small λ to the head that overfits, so the negative
strength gives that head the large coefficient. `benchmarks/olm_defaults.py`
measures both directions (tables in `benchmarks/README.md`).

Head stopping (`head_stopping`, on by default) reads the same held-out
losses as Eq. 6 for a different purpose: a modality head whose held-out
loss has stopped improving stops sending gradient into its encoder, for
good (`stopping_step`), and goes on as a linear probe. The per-head
losses help early, while the weak encoders still learn what generalizes;
later they make those encoders memorize their training samples, and the
fused head learns to trust them. With head stopping on, the logit
modulation added nothing measurable, so the default strength is 0 (no
modulation): OLM's default is the per-head losses of Eq. 5, stopped per
head by the generalization its held-out losses show.

The paper leaves choices open; each is a constructor argument here, and
`OLM.authors()` reproduces the authors' code. See the README section "OLM:
the open choices" for the measurements behind the defaults.
"""

import keras
import numpy as np
from keras import ops

from keras_olm.balancers.base import Balancer
from keras_olm.balancers.common import check_choice
from keras_olm.balancers.common import cross_entropy

OPTIMIZERS = ("sgd", "adam")
COEFFICIENT_UPDATES = ("closed_form", "optimizer")
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
    "stopping_losses",
    "best_stopping_losses",
    "stopping_waits",
    "stopped",
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


def stopping_step(losses, best, waits, stopped, patience, min_delta):
    """One held-out measurement of head stopping (early stopping per head).

    A head improves when its averaged held-out loss falls below
    best · (1 - min_delta); then best takes that loss and the wait count
    restarts, else the count grows by one. A head stops once it has waited
    `patience` measurements, and stays stopped.

    Args:
        losses: tensor `(num_heads,)`. Averaged held-out losses now.
        best: tensor `(num_heads,)`. Lowest losses so far.
        waits: tensor `(num_heads,)`. Measurements since the last
            improvement.
        stopped: tensor `(num_heads,)`. 1 for a stopped head, else 0.
        patience: int >= 1.
        min_delta: float >= 0. The relative fall that counts.

    Returns:
        `(best, waits, stopped)`, three tensors `(num_heads,)`.
    """
    losses, best, waits, stopped = _tensors(losses, best, waits, stopped)
    improved = losses < best * (1.0 - min_delta)
    best = ops.where(improved, losses, best)
    waits = ops.where(improved, 0.0, waits + 1.0)
    stopped = ops.maximum(stopped, ops.cast(waits >= patience, "float32"))
    return best, waits, stopped


def _mean_logit_norms(logits):
    """`mean_logit_norm` of every head's logits, `(num_heads,)`, detached."""
    # Every head gives (batch, num_classes): one pass over the stack.
    stacked = ops.cast(ops.stop_gradient(ops.stack(logits)), "float32")
    return ops.mean(ops.sqrt(ops.sum(ops.square(stacked), axis=-1)), axis=-1)


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
    computes the rates G and C (Eq. 6-7), the factors λ (Eq. 8), the target
    norms (Eq. 9), and moves the coefficients one optimizer step down
    L_logit (Algorithm 1). All state lives in two non-trainable variables
    that are updated with `assign` inside the compiled train step, so the
    same code runs on TensorFlow, JAX and PyTorch and is saved with the
    model: `state`, one row per quantity of `STATE_ROWS` (coefficients,
    λ, norms, running and Θ0 losses, Adam's moments; each is also a
    read-only attribute, e.g. `olm.coefficients`), and `counters`
    (`olm.steps`, `olm.held_out_steps`).

    By default every modality head stops training its encoder once its
    held-out loss has stopped improving (`head_stopping=40` steps), and the
    coefficients are the closed form of λ with strength 0, i.e. all 1: on
    the problems measured (`benchmarks/olm_defaults.py`), no logit
    modulation beat the same heads unmodulated, and head stopping kept
    OLM within a point of plain joint training where the unmodulated
    heads fell up to 8 points behind it on long runs. With a nonzero
    `modulation_strength` γ the coefficients follow λ, settle when λ
    does and stay between (H / (e + H - 1))^γ and (H e / (e + H - 1))^γ
    (λ temperature 1; for three heads and γ = -2, [0.33, 2.47]).
    `coefficient_update="optimizer"` integrates L_logit as Algorithm 1
    (the coefficients then run to the clip bounds on long runs);
    `OLM.authors()` reproduces the authors' code, including its collapse
    (λ one-hot, coefficients to 0) on imbalanced problems.

    Args:
        held_out_schedule: str. Where the held-out losses come from.
            `"periodic"`: one held-out batch every `held_out_every` steps (the
            batches between carry no held-out data and cost nothing).
            `"step"`: one held-out batch every step, as the authors do
            (one extra forward pass per step). Defaults to `"periodic"`.
        held_out_every: int. The period of the `"periodic"` schedule, in steps
            (steps 0, k, 2k, ... of each `fit` call). Defaults to `20`:
            as accurate as every 10 steps or every step on
            `benchmarks/olm_defaults.py`, and the held-out forward pass
            then costs 1.3-1.7% of the training time on TensorFlow and
            torch, 2.0-2.9% on JAX (`benchmarks/olm_overhead.py`).
        optimizer: str. `"sgd"` as in Algorithm 1, or `"adam"` as in the
            authors' code (on the analytic gradient of L_logit, so no
            second Keras optimizer is needed). Adam's steps do not depend
            on the logits' scale; SGD's are proportional to the logit
            norms. Defaults to `"adam"`.
        learning_rate: float. Step size of the coefficient optimizer.
            Defaults to `1e-3`.
        coefficient_ce_grad: bool. Whether the coefficients also follow the
            gradient of the cross-entropy of their head, as in the authors'
            code (they are parameters of a second optimizer there). The
            paper's Algorithm 1 only names L_logit. Defaults to `False`.
        targets: str. `"preserve"` (targets sum to the total norm) or
            `"faithful"` (targets sum to the mean norm, as Eq. 9 writes;
            all coefficients then shrink over time). See `logit_targets`.
            Defaults to `"preserve"`.
        lambda_temperature: float or `None`. Softens Eq. 8 (see
            `rebalancing_factors`); `None` is the raw softmax of G / C.
            Defaults to `1.0`.
        rate_form: str. `"code"` (signed, the authors' code) or `"paper"`
            (the absolute values of Eq. 6-7). Defaults to `"code"`.
        coefficient_range: tuple of two floats, or `None`. Coefficients are
            clipped into this range after every update; `None` for no
            clipping. Defaults to `(0.1, 10.0)`.
        loss_momentum: float in [0, 1). The train and held-out losses that
            enter G and C are exponential moving averages with this
            momentum (single batches are noisy); 0 uses each batch's loss
            as the authors do. Defaults to `0.9`.
        warmup_steps: int. For this many steps the Θ0 reference losses keep
            being overwritten by the current ones and λ stays uniform (the
            authors' code does this for the whole first epoch). With 0 the
            reference is the first measurement, taken before any update.
            Defaults to `0`.
        mean_one: bool. Rescale the coefficients after every update so
            that their mean is 1: OLM then only redistributes magnitude
            between heads. Without it the coefficients drift as a whole
            (the network rescales its logits to undo any coefficient, so
            L_logit never pins their overall scale). Defaults to `True`.
        coefficient_update: str. `"closed_form"`: w_h = (H λ_h)^strength
            after every step (`closed_form_coefficients`; nothing is
            integrated, and `optimizer`, `learning_rate`,
            `coefficient_ce_grad`, `targets` and `mean_one` are not used).
            `"optimizer"`: one step of `optimizer` down L_logit (Eq. 9,
            Algorithm 1). Defaults to `"closed_form"`.
        modulation_strength: float. The exponent of the closed form; 0 is
            no modulation (every coefficient 1), positive gives the head
            with the largest λ the largest coefficient (the paper's
            direction), negative the smallest. Defaults to `0.0`: on the
            generated family (`benchmarks/olm_defaults.py`) positive
            strengths lowered fused accuracy after 40 epochs; without head
            stopping -2 raised it against `"heads"`, but with head
            stopping -2 cost 0 to 1 point against 0.
        lambda_momentum: float in [0, 1). λ is an exponential moving
            average with this momentum, moved on held-out steps only (λ on
            a slower clock); 0 uses each step's λ. Defaults to `0.9`: on
            the generated family the closed-form coefficients then moved
            by a median 0.05 over the last 10 of 100 epochs (0.33 with
            0), at the same accuracy.
        head_stopping: int or `None`. Early stopping per modality head,
            with this patience in training steps: once a head's held-out
            loss has not improved (by `head_stopping_min_delta`) over that
            many steps (counted in held-out measurements:
            `head_stopping_patience`), its loss stops training its encoder
            for good (`stopping_step`); the head itself goes on training
            as a linear probe, and the fused head is never stopped. The
            held-out losses of Eq. 6 show when a unimodal head starts to
            overfit; from then on its loss only makes its encoder
            memorize, and the fused head learns to trust features that do
            not generalize. `None` switches it off (every head's loss
            always reaches its encoder, as in the paper). Defaults to
            `40`: two held-out measurements with the default schedule.
        head_stopping_min_delta: float >= 0. The relative fall of a head's
            held-out loss that counts as an improvement. Defaults to
            `0.01`.
        head_stopping_momentum: float in [0, 1). Head stopping reads its
            own moving average of the held-out losses, with this momentum
            (shorter than `loss_momentum`'s, so that it reacts within an
            epoch or two). Defaults to `0.5`.
        eps: float. Clamp of G and C in Eq. 8. Defaults to `1e-6`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.OLM(held_out_schedule="step"),
    )
    model.compile(optimizer="adam")
    model.fit(train_ds, held_out_data=held_out_ds, epochs=10)
    ```

    References:
        - [Zong et al., 2024](https://www.ijcai.org/proceedings/2024/636)
    """

    needs_held_out = True
    measures_steps = True

    def __init__(
        self,
        held_out_schedule="periodic",
        held_out_every=20,
        optimizer="adam",
        learning_rate=1e-3,
        coefficient_ce_grad=False,
        targets="preserve",
        lambda_temperature=1.0,
        rate_form="code",
        coefficient_range=(0.1, 10.0),
        loss_momentum=0.9,
        warmup_steps=0,
        mean_one=True,
        coefficient_update="closed_form",
        modulation_strength=0.0,
        lambda_momentum=0.9,
        head_stopping=40,
        head_stopping_min_delta=0.01,
        head_stopping_momentum=0.5,
        eps=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.set_held_out_schedule(held_out_schedule, held_out_every)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("targets", targets, TARGETS)
        check_choice("rate_form", rate_form, RATE_FORMS)
        check_choice(
            "coefficient_update", coefficient_update, COEFFICIENT_UPDATES
        )
        if not 0.0 <= float(lambda_momentum) < 1.0:
            raise ValueError(
                f"lambda_momentum must be in [0, 1); got {lambda_momentum}"
            )
        if not 0.0 <= float(loss_momentum) < 1.0:
            raise ValueError(
                f"loss_momentum must be in [0, 1); got {loss_momentum}"
            )
        if not 0.0 <= float(head_stopping_momentum) < 1.0:
            raise ValueError(
                "head_stopping_momentum must be in [0, 1); got "
                f"{head_stopping_momentum}"
            )
        if head_stopping is not None and (
            int(head_stopping) != head_stopping or head_stopping < 1
        ):
            raise ValueError(
                "head_stopping must be a patience >= 1 (training steps) "
                f"or None; got {head_stopping}"
            )
        if not float(head_stopping_min_delta) >= 0:
            raise ValueError(
                "head_stopping_min_delta must be >= 0; got "
                f"{head_stopping_min_delta}"
            )
        if lambda_temperature is not None and lambda_temperature <= 0:
            raise ValueError(
                "lambda_temperature must be > 0 or None; "
                f"got {lambda_temperature}"
            )
        if coefficient_range is not None:
            low, high = coefficient_range
            if not 0 <= low < high:
                raise ValueError(
                    "coefficient_range must be (low, high) with "
                    f"0 <= low < high; got {coefficient_range}"
                )
            coefficient_range = (float(low), float(high))
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.coefficient_ce_grad = bool(coefficient_ce_grad)
        self.targets = targets
        self.lambda_temperature = (
            None if lambda_temperature is None else float(lambda_temperature)
        )
        self.rate_form = rate_form
        self.coefficient_range = coefficient_range
        self.loss_momentum = float(loss_momentum)
        self.warmup_steps = int(warmup_steps)
        self.mean_one = bool(mean_one)
        self.coefficient_update = coefficient_update
        self.modulation_strength = float(modulation_strength)
        self.lambda_momentum = float(lambda_momentum)
        self.head_stopping = (
            None if head_stopping is None else int(head_stopping)
        )
        self.head_stopping_min_delta = float(head_stopping_min_delta)
        self.head_stopping_momentum = float(head_stopping_momentum)
        self.eps = float(eps)

    @classmethod
    def authors(cls, steps_per_epoch, **kwargs):
        """OLM exactly as the authors' code runs it.

        A held-out batch every step; Adam (learning rate 1e-3) on the
        coefficients, which also follow the cross-entropy; faithful
        targets; the raw softmax of G / C; no clipping; each batch's raw
        loss; Θ0 overwritten during the whole first epoch. On imbalanced
        problems λ goes one-hot and the coefficients of the other heads go
        to 0 (see the README); it is here for comparison.

        Args:
            steps_per_epoch: int. Steps in one epoch (the reference window).
            **kwargs: overrides of any constructor argument.
        """
        config = dict(
            held_out_schedule="step",
            optimizer="adam",
            learning_rate=1e-3,
            coefficient_ce_grad=True,
            targets="faithful",
            lambda_temperature=None,
            rate_form="code",
            coefficient_range=None,
            loss_momentum=0.0,
            warmup_steps=int(steps_per_epoch),
            mean_one=False,
            coefficient_update="optimizer",
            lambda_momentum=0.0,
            head_stopping=None,
        )
        config.update(kwargs)
        return cls(**config)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        initial = np.zeros((len(STATE_ROWS), self.num_heads), "float32")
        initial[STATE_ROWS.index("coefficients")] = 1.0
        initial[STATE_ROWS.index("lambdas")] = 1.0 / self.num_heads
        # Two variables, not one per quantity: on TensorFlow the update is
        # an XLA cluster whose every variable costs an input and an output,
        # and under torch every variable costs a `where` and an `assign`
        # dispatched eagerly.
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
    stopping_losses = _state_row(
        "stopping_losses",
        "Held-out losses averaged with `head_stopping_momentum`, `(H,)`.",
    )
    best_stopping_losses = _state_row(
        "best_stopping_losses",
        "Lowest `stopping_losses` so far (head stopping), `(H,)`.",
    )
    stopping_waits = _state_row(
        "stopping_waits",
        "Held-out measurements since each head last improved, `(H,)`.",
    )
    stopped = _state_row(
        "stopped", "1 for each head that head stopping stopped, `(H,)`."
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

    def unimodal_gradient_gates(self):
        if self.head_stopping is None:
            return None
        return ops.stop_gradient(self.gates[:-1])

    @property
    def head_stopping_patience(self):
        """`head_stopping` in held-out measurements: its steps divided by
        `held_out_period`, rounded up (at least 1)."""
        steps = self.head_stopping
        return max(1, -(-steps // self.held_out_period))

    @property
    def gates(self):
        """1 - `stopped`, `(H,)`: the factor on each head's gradient into
        its encoder (the fused head's entry is never applied)."""
        return 1.0 - self.stopped

    def update(self, step):
        state, counters = self.state.value, self.counters.value
        old = dict(zip(STATE_ROWS, ops.unstack(state)))
        steps = counters[0] + 1
        has_held_out = step.held_out_flag > 0
        held_out_steps = counters[1] + ops.cast(has_held_out, "int32")
        warm = steps <= self.warmup_steps

        # Running losses: an EMA, started at the first measurement.
        m = self.loss_momentum
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
        # Head stopping's own average of the held-out losses, and its best.
        k = self.head_stopping_momentum
        stop = ops.where(
            held_out_steps == 1,
            step.held_out_losses,
            k * old["stopping_losses"] + (1 - k) * step.held_out_losses,
        )
        stop = ops.where(has_held_out, stop, old["stopping_losses"])
        stopping = dict(
            best_stopping_losses=old["best_stopping_losses"],
            stopping_waits=old["stopping_waits"],
            stopped=old["stopped"],
        )
        if self.head_stopping is not None:
            first = held_out_steps == 1
            best, waits, stopped = stopping_step(
                stop,
                ops.where(first, stop, old["best_stopping_losses"]),
                ops.where(first, -1.0, old["stopping_waits"]),
                old["stopped"],
                self.head_stopping_patience,
                self.head_stopping_min_delta,
            )
            for name, value in zip(stopping, (best, waits, stopped)):
                stopping[name] = ops.where(has_held_out, value, old[name])

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
        g, c = rates(ref_train, ref_held_out, train, held_out, self.rate_form)
        lambdas = rebalancing_factors(g, c, self.lambda_temperature, self.eps)
        ready = ops.logical_and(ops.logical_not(warm), held_out_steps > 1)
        lambdas = ops.where(ready, lambdas, 1.0 / self.num_heads)
        if self.lambda_momentum > 0:
            # λ on a slower clock: an EMA, moved on held-out steps only.
            k = self.lambda_momentum
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
        if self.coefficient_update == "closed_form":
            new_w = closed_form_coefficients(lambdas, self.modulation_strength)
            moments = {}
        else:
            new_w, moments = self._logit_loss_step(
                w, mean_norms, lambdas, steps, old, step
            )
        if self.coefficient_range is not None:
            new_w = ops.clip(new_w, *self.coefficient_range)
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
            stopping_losses=stop,
            **stopping,
            **moments,
        )

    def _logit_loss_step(self, w, mean_norms, lambdas, steps, old, step):
        """Eq. 9 and one optimizer step of Algorithm 1.

        Returns:
            The new coefficients (before clipping) and the optimizer's new
            moments as `{"adam_m": ..., "adam_v": ...}`.
        """
        targets = logit_targets(w * mean_norms, lambdas, self.targets)
        grad = logit_loss_gradient(w, mean_norms, targets)
        if self.coefficient_ce_grad:
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
        if self.mean_one:
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
        lr = self.learning_rate
        if self.optimizer == "sgd":
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
        if self.head_stopping is not None:
            gates = self.gates
            for i, h in enumerate(self.head_names[:-1]):
                logs[f"{h}_gate"] = gates[i]
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            held_out_schedule=self.held_out_schedule,
            held_out_every=self.held_out_every,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            coefficient_ce_grad=self.coefficient_ce_grad,
            targets=self.targets,
            lambda_temperature=self.lambda_temperature,
            rate_form=self.rate_form,
            coefficient_range=self.coefficient_range,
            loss_momentum=self.loss_momentum,
            warmup_steps=self.warmup_steps,
            mean_one=self.mean_one,
            coefficient_update=self.coefficient_update,
            modulation_strength=self.modulation_strength,
            lambda_momentum=self.lambda_momentum,
            head_stopping=self.head_stopping,
            head_stopping_min_delta=self.head_stopping_min_delta,
            head_stopping_momentum=self.head_stopping_momentum,
            eps=self.eps,
        )
        return config


__all__ = [
    "OLM",
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
