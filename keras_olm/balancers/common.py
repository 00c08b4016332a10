"""Helpers that several balancers share: the per-head loss, the scores of
a modality's head, the window of epochs in which a balancer acts, a holder
of head layers and a gradient gate."""

import contextlib
import contextvars

import keras
from keras import ops

#: The sum over the replicas or processes that each hold a share of the
#: global batch, while a training step computes its loss; `None` outside
#: one and where the step sees the global batch.
_REPLICA_SUM = contextvars.ContextVar("keras_olm_replica_sum", default=None)


def replica_sum(x):
    """`x` summed over the shares of the global batch.

    A balancer whose loss reads a statistic of the batch (a sum over its
    samples: PMR's prototype scores) calls this on it in `compute_loss`,
    so that every replica (`tf.distribute`) or process
    (`torch.distributed`) computes the loss with the global batch's
    statistic, as one device does. On one device, under JAX (whose step
    sees the global batch), and anywhere but in a training step's loss, it
    returns `x` itself.

    Args:
        x: tensor. This share's sum, detached.

    Returns:
        The sum of `x` over every share of the global batch.
    """
    fn = _REPLICA_SUM.get()
    return x if fn is None else fn(x)


@contextlib.contextmanager
def summing_over_replicas(fn):
    """The context in which `replica_sum` applies `fn`; a backend's
    training step enters it around its loss.

    Args:
        fn: callable or `None`. Sums a tensor over the replicas or
            processes; `None` for one device.
    """
    token = _REPLICA_SUM.set(fn)
    try:
        yield
    finally:
        _REPLICA_SUM.reset(token)


def check_choice(name, value, choices):
    """Raises a `ValueError` naming argument `name` unless `value` is one
    of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def cross_entropy(y, logits, sample_weight=None):
    """Mean sparse categorical cross-entropy of one head.

    Args:
        y: int tensor. Labels, shape `(batch,)`.
        logits: float tensor. Logits, shape `(batch, num_classes)`.
        sample_weight: float tensor or `None`. Per-sample weights.

    Returns:
        A scalar: the batch mean of the per-sample losses (weighted by
        `sample_weight` where given, divided by the batch size, as Keras'
        `"sum_over_batch_size"` reduction does).
    """
    per_sample = keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True
    )
    if sample_weight is not None:
        per_sample = per_sample * ops.cast(sample_weight, per_sample.dtype)
    return ops.mean(per_sample)


def gate_gradient(x, gate):
    """`x` in the forward pass; its gradient multiplied by `gate`.

    Args:
        x: float tensor.
        gate: float scalar tensor in [0, 1], detached.

    Returns:
        A tensor equal to `x` (`x - x` is exactly 0) whose gradient is
        `gate` times the incoming one.
    """
    detached = ops.stop_gradient(x)
    return detached + (x - detached) * ops.cast(gate, x.dtype)


class HeadLayers:
    """Plain holder of a balancer's head layers, by head name, invisible to
    Keras' tracking (the model tracks the heads)."""

    def __init__(self):
        self.layers = {}


def true_class_scores(y, logits):
    """Summed softmax probability of the true class (OGM-GE's Eq. 8).

    Args:
        y: int tensor `(batch,)`. Labels.
        logits: float tensor `(batch, num_classes)`. One modality's logits.

    Returns:
        A scalar: Σ_i softmax(logits_i)[y_i].
    """
    logits = ops.convert_to_tensor(logits, "float32")
    probs = ops.softmax(logits, axis=-1)
    onehot = ops.one_hot(ops.cast(y, "int32"), ops.shape(logits)[-1])
    return ops.sum(probs * onehot)


def discrepancy_ratios(scores, eps=1e-8):
    """Each modality's score over the mean score of the others (Eq. 9).

    For two modalities this is ρ_a = s_a / s_v and ρ_v = s_v / s_a, as in
    OGM-GE; for more, the mean of the other modalities' scores is the
    denominator.

    Args:
        scores: tensor `(num_modalities,)`. Scores s_u (Eq. 8).
        eps: float. Added to the denominator. Defaults to `1e-8`.

    Returns:
        A tensor `(num_modalities,)`.
    """
    scores = ops.convert_to_tensor(scores, "float32")
    m = ops.shape(scores)[0]
    others = (ops.sum(scores) - scores) / ops.cast(m - 1, "float32")
    return scores / (others + eps)


class EpochWindow:
    """The epochs `[starts, ends]` (inclusive) in which a balancer acts.

    Balancers count steps, not epochs: with `steps_per_epoch` the step
    counter gives the epoch as `steps // steps_per_epoch`; without it the
    window is open on every step, and `starts` and `ends` must keep their
    defaults.

    Args:
        starts: int. First epoch of the window. Defaults to `0`.
        ends: int or `None`. Last epoch (inclusive); `None` for no end.
        steps_per_epoch: int or `None`. Steps in one epoch.
        names: tuple of two str. The arguments' names in the balancer,
            for error messages.
    """

    def __init__(
        self,
        starts=0,
        ends=None,
        steps_per_epoch=None,
        names=("modulation_starts", "modulation_ends"),
    ):
        if steps_per_epoch is None:
            if starts != 0 or ends is not None:
                raise ValueError(
                    f"{names[0]}/{names[1]} are epochs: pass "
                    "steps_per_epoch too."
                )
        elif int(steps_per_epoch) < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1; got {steps_per_epoch}"
            )
        self.starts = int(starts)
        self.ends = None if ends is None else int(ends)
        self.steps_per_epoch = (
            None if steps_per_epoch is None else int(steps_per_epoch)
        )

    def contains(self, steps):
        """Whether step `steps` (an int tensor) lies in the window."""
        if self.steps_per_epoch is None:
            return ops.convert_to_tensor(True)
        epoch = steps // self.steps_per_epoch
        active = epoch >= self.starts
        if self.ends is not None:
            active = ops.logical_and(active, epoch <= self.ends)
        return active
