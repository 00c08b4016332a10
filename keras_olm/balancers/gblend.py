"""Gradient-Blending (Wang, Tran and Feiszli, CVPR 2020).

"What Makes Training Multi-Modal Classification Networks Hard?". Every
head k (each modality's and the fused one) has a loss weight w_k, and the
training loss is the blend Σ_k w_k L_k. The weights come from how much
each head generalizes versus how much it overfits between two
checkpoints N and N + n, measured on the training data T and on
held-out training data V:

    O_N   = L_V(N) - L_T(N)                   (overfitting, Sec. 3.2)
    ΔG    = L_V(N) - L_V(N + n)               (generalization gained)
    ΔO    = O_(N+n) - O_N                     (overfitting gained)
    OGR   = |ΔO / ΔG|                         (Sec. 3.2)
    w_k   = (1 / Z) · ΔG_k / ΔO_k²            (Proposition 1's estimate)

and online Gradient-Blending (Sec. 3.3) re-estimates the weights every
few epochs. Here L_T(N) and L_V(N) are the means of the per-head
training-batch losses and held-out-batch losses over a window of
`refresh_every` steps (not a separate pass over the training set); at the
end of each window the weights are re-estimated from that window and the
previous one. Until two windows have been measured the weights are
uniform.
"""

import keras
from keras import ops

from keras_olm.balancers.base import Balancer

# --- the math, as pure functions -----------------------------------------


def generalization_and_overfitting(train0, dev0, train1, dev1):
    """ΔG and ΔO of every head between two checkpoints (Sec. 3.2).

    Args:
        train0: tensor `(num_heads,)`. Training losses at checkpoint N.
        dev0: tensor `(num_heads,)`. Held-out losses at N.
        train1: tensor `(num_heads,)`. Training losses at N + n.
        dev1: tensor `(num_heads,)`. Held-out losses at N + n.

    Returns:
        `(delta_g, delta_o)`: ΔG = L_V(N) - L_V(N + n) and
        ΔO = (L_V(N + n) - L_T(N + n)) - (L_V(N) - L_T(N)).
    """
    train0, dev0, train1, dev1 = [
        ops.convert_to_tensor(v, "float32")
        for v in (train0, dev0, train1, dev1)
    ]
    delta_g = dev0 - dev1
    delta_o = (dev1 - train1) - (dev0 - train0)
    return delta_g, delta_o


def blend_weights(delta_g, delta_o, eps=1e-6):
    """Gradient-Blending weights w_k ∝ ΔG_k / ΔO_k² (Proposition 1).

    A head that did not generalize (ΔG ≤ 0) gets weight 0; ΔO² is
    clamped below by `eps` so a head that did not overfit at all gets a
    large but finite weight. The weights are normalised to sum to 1 (the
    1/Z of the paper); if every head has ΔG ≤ 0 they are uniform.

    Args:
        delta_g: tensor `(num_heads,)`. Generalization gained.
        delta_o: tensor `(num_heads,)`. Overfitting gained.
        eps: float. Floor of ΔO². Defaults to `1e-6`.

    Returns:
        A tensor `(num_heads,)` that sums to 1.
    """
    delta_g = ops.convert_to_tensor(delta_g, "float32")
    delta_o = ops.convert_to_tensor(delta_o, "float32")
    raw = ops.relu(delta_g) / ops.maximum(ops.square(delta_o), eps)
    total = ops.sum(raw)
    uniform = ops.ones_like(raw) / ops.cast(ops.shape(raw)[0], raw.dtype)
    return ops.where(total > 0, raw / ops.maximum(total, 1e-30), uniform)


# --- the layer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_olm")
class GBlend(Balancer):
    """Online Gradient-Blending: per-head loss weights from ΔG / ΔO².

    The training loss is Σ_k w_k L_k over the heads. Every step adds the
    per-head training losses and, on steps that carry a held-out batch,
    the per-head held-out losses to running sums. Every `refresh_every`
    steps (once the window holds at least one held-out batch) the window's
    mean losses are compared with the previous window's: the weights
    become ΔG / ΔO² normalised (`blend_weights`), so a head that keeps
    improving on held-out data without widening its train/held-out gap
    gets a large weight and an overfitting head a small one. The weights
    are then multiplied by the number of heads, so that uniform weights
    are all 1 as with `"heads"` (only the blend's proportions are
    Gradient-Blending's).

    The paper re-estimates every few epochs; pass
    `refresh_every=k * steps_per_epoch` for that.

    Args:
        refresh_every: int. Window length in steps between weight
            re-estimations. Defaults to `100`.
        held_out_schedule: str. `"periodic"` (a held-out batch every
            `held_out_every` steps) or `"step"` (every step). Defaults to
            `"periodic"`.
        held_out_every: int. Period of the `"periodic"` schedule. Defaults to
            `10`.
        eps: float. Floor of ΔO² (see `blend_weights`). Defaults to
            `1e-6`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        encoders,
        num_classes=6,
        balancer=keras_olm.balancers.GBlend(refresh_every=2 * 50),
    )
    model.compile(optimizer="adam")
    model.fit(train_ds, held_out_data=held_out_ds, epochs=10)
    ```

    References:
        - [Wang et al., 2020](https://arxiv.org/abs/1905.12681)
    """

    needs_held_out = True
    measures_steps = True

    def __init__(
        self,
        refresh_every=100,
        held_out_schedule="periodic",
        held_out_every=10,
        eps=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(refresh_every) < 1:
            raise ValueError(f"refresh_every must be >= 1; got {refresh_every}")
        self.set_held_out_schedule(held_out_schedule, held_out_every)
        self.refresh_every = int(refresh_every)
        self.eps = float(eps)

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        state = self.add_state
        self.weights_ = state("blend_weights", 1.0)
        self.train_sum = state("train_sum")
        self.held_out_sum = state("held_out_sum")
        self.train_count = state("train_count", shape=())
        self.held_out_count = state("held_out_count", shape=())
        self.reference_train = state("reference_train")
        self.reference_held_out = state("reference_held_out")
        self.windows = state("windows", 0, shape=(), dtype="int32")
        self.steps = state("steps", 0, shape=(), dtype="int32")

    def head_loss_weights(self):
        return ops.stop_gradient(self.weights_.value)

    def update(self, step):
        # Its own variables only: head stopping's are updated by itself.
        own = list(self._non_trainable_variables)
        old = {v.name: v.value for v in own}
        steps = old["steps"] + 1
        flag = ops.cast(step.held_out_flag > 0, "float32")
        train_sum = old["train_sum"] + step.head_losses
        train_count = old["train_count"] + 1.0
        held_out_sum = old["held_out_sum"] + flag * step.held_out_losses
        held_out_count = old["held_out_count"] + flag
        refresh = ops.logical_and(
            steps % self.refresh_every == 0, held_out_count > 0
        )
        train_mean = train_sum / ops.maximum(train_count, 1.0)
        held_out_mean = held_out_sum / ops.maximum(held_out_count, 1.0)
        delta_g, delta_o = generalization_and_overfitting(
            old["reference_train"],
            old["reference_held_out"],
            train_mean,
            held_out_mean,
        )
        blended = blend_weights(delta_g, delta_o, self.eps) * self.num_heads
        ready = ops.logical_and(refresh, old["windows"] > 0)
        zeros = ops.zeros_like(train_sum)
        new = {
            "blend_weights": ops.where(ready, blended, old["blend_weights"]),
            "train_sum": ops.where(refresh, zeros, train_sum),
            "held_out_sum": ops.where(refresh, zeros, held_out_sum),
            "train_count": ops.where(refresh, 0.0, train_count),
            "held_out_count": ops.where(refresh, 0.0, held_out_count),
            "reference_train": ops.where(
                refresh, train_mean, old["reference_train"]
            ),
            "reference_held_out": ops.where(
                refresh, held_out_mean, old["reference_held_out"]
            ),
            "windows": old["windows"] + ops.cast(refresh, "int32"),
            "steps": steps,
        }
        return [(v, new[v.name]) for v in own]

    def step_logs(self):
        logs = {
            f"{h}_blend": self.weights_.value[i]
            for i, h in enumerate(self.head_names)
        }
        logs.update(super().step_logs())
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            refresh_every=self.refresh_every,
            held_out_schedule=self.held_out_schedule,
            held_out_every=self.held_out_every,
            eps=self.eps,
        )
        return config


__all__ = ["GBlend", "blend_weights", "generalization_and_overfitting"]
