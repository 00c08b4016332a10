"""Head stopping: early stopping per modality head, on held-out losses.

Every balancer whose unimodal heads train their encoders takes it
(`Balancer(head_stopping=HeadStopping())`). On every held-out measurement
each head's held-out loss enters an exponential moving average (started
at the first measurement); a head whose average has not fallen by
`min_delta` (relative) below its best for `patience` training steps stops
sending gradient into its encoder, for good. The head itself goes on
training as a linear probe, and the fused head is never stopped. The
per-head losses help early, while the weak encoders still learn what
generalizes; once a head's held-out loss stops improving they only make
its encoder memorize its training samples.
"""

import keras
from keras import ops

#: The rows of `HeadStopping.state`, one entry per head each.
STATE_ROWS = ("losses", "best_losses", "waits", "stopped")


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
    losses, best, waits, stopped = [
        ops.convert_to_tensor(v, "float32")
        for v in (losses, best, waits, stopped)
    ]
    improved = losses < best * (1.0 - min_delta)
    best = ops.where(improved, losses, best)
    waits = ops.where(improved, 0.0, waits + 1.0)
    stopped = ops.maximum(stopped, ops.cast(waits >= patience, "float32"))
    return best, waits, stopped


def _state_row(name, doc):
    """A read-only property: row `name` of the layer's `state` variable."""
    index = STATE_ROWS.index(name)
    return property(lambda self: self.state.value[index], doc=doc)


@keras.saving.register_keras_serializable(package="keras_olm")
class HeadStopping(keras.layers.Layer):
    """Early stopping of each modality head's gradient into its encoder.

    A part of a balancer, given to its constructor (`head_stopping=`); the
    balancer builds it with its heads, reads held-out losses for it
    (`needs_held_out`), composes its `update` with its own, gates the
    unimodal heads with `gates` and logs `<modality>_gate`. Its state lives
    in two non-trainable float32 variables saved with the model: `state`,
    one row per quantity of `STATE_ROWS` (the averaged held-out losses,
    their best, the measurements waited since the best, and 1 for each
    stopped head; each is also a read-only attribute), and
    `measurements`, the number of held-out measurements so far.

    Args:
        patience: int >= 1. Training steps without improvement after which
            a head stops, counted in held-out measurements: divided by the
            balancer's held-out period and rounded up, at least 1
            (`patience_in_measurements`). Defaults to `40`.
        min_delta: float >= 0. The relative fall of a head's averaged
            held-out loss that counts as an improvement. Defaults to
            `0.01`.
        momentum: float in [0, 1). Momentum of the moving average of the
            held-out losses that head stopping reads. Defaults to `0.5`.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    balancer = keras_olm.balancers.Balancer(
        head_stopping=keras_olm.balancers.HeadStopping(patience=40)
    )
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, balancer=balancer
    )
    model.compile(optimizer="adam")
    model.fit(train_ds, held_out_data=held_out_ds, epochs=10)
    ```
    """

    def __init__(self, patience=40, min_delta=0.01, momentum=0.5, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if int(patience) != patience or patience < 1:
            raise ValueError(
                "head_stopping patience must be an int >= 1 (training "
                f"steps); got {patience}"
            )
        if not float(min_delta) >= 0:
            raise ValueError(
                f"head_stopping min_delta must be >= 0; got {min_delta}"
            )
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(
                f"head_stopping momentum must be in [0, 1); got {momentum}"
            )
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.momentum = float(momentum)
        self.held_out_period = None

    def build_heads(self, num_heads, held_out_period):
        """Creates the state for `num_heads` heads.

        Args:
            num_heads: int. Modality heads and the fused one.
            held_out_period: int. Training steps between two held-out
                measurements of the balancer.
        """
        self.held_out_period = int(held_out_period)
        self.state = self.add_weight(
            name="head_stopping_state",
            shape=(len(STATE_ROWS), int(num_heads)),
            initializer="zeros",
            dtype="float32",
            trainable=False,
        )
        self.measurements = self.add_weight(
            name="head_stopping_measurements",
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
        )
        self.built = True

    losses = _state_row(
        "losses", "Held-out losses averaged with `momentum`, `(H,)`."
    )
    best_losses = _state_row("best_losses", "Lowest `losses` so far, `(H,)`.")
    waits = _state_row(
        "waits", "Held-out measurements since each head last improved."
    )
    stopped = _state_row("stopped", "1 for each stopped head, `(H,)`.")

    def patience_in_measurements(self, held_out_period):
        """`patience` in held-out measurements: its steps divided by
        `held_out_period` (steps between two measurements), rounded up, at
        least 1."""
        return max(1, -(-self.patience // int(held_out_period)))

    @property
    def gates(self):
        """1 - `stopped`, `(H,)`: the factor on each head's gradient into
        its encoder (the fused head's entry is never applied)."""
        return 1.0 - self.stopped

    def update(self, held_out_losses, held_out_flag):
        """The new state after one step, as `(variable, value)` pairs.

        Args:
            held_out_losses: tensor `(num_heads,)`. The step's held-out
                losses; read only where `held_out_flag` is 1.
            held_out_flag: float scalar tensor. 1 when the step measured a
                held-out batch, else 0.

        Returns:
            A list of `(variable, new value)` pairs.
        """
        old = dict(zip(STATE_ROWS, ops.unstack(self.state.value)))
        has_held_out = held_out_flag > 0
        measurements = self.measurements.value + ops.cast(
            has_held_out, "float32"
        )
        first = measurements == 1.0
        # The moving average, started at the first measurement.
        k = self.momentum
        losses = ops.where(
            first,
            held_out_losses,
            k * old["losses"] + (1 - k) * held_out_losses,
        )
        losses = ops.where(has_held_out, losses, old["losses"])
        best, waits, stopped = stopping_step(
            losses,
            ops.where(first, losses, old["best_losses"]),
            ops.where(first, -1.0, old["waits"]),
            old["stopped"],
            self.patience_in_measurements(self.held_out_period),
            self.min_delta,
        )
        new = dict(losses=losses)
        for name, value in zip(STATE_ROWS[1:], (best, waits, stopped)):
            new[name] = ops.where(has_held_out, value, old[name])
        return [
            (self.state, ops.stack([new[name] for name in STATE_ROWS])),
            (self.measurements, measurements),
        ]

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            patience=self.patience,
            min_delta=self.min_delta,
            momentum=self.momentum,
        )
        return config


__all__ = ["STATE_ROWS", "HeadStopping", "stopping_step"]
