"""Loss scaling in the training step (mixed precision with float16).

Under `mixed_float16`, `compile` wraps the optimizer in Keras'
`LossScaleOptimizer`, and a step must differentiate the loss multiplied by
the optimizer's current scale (`optimizer.scale_loss`), as Keras' own steps
do, so that small float16 gradients do not underflow; the optimizer
divides the scale out again in `apply`, skips a step whose scaled
gradients overflowed and lowers the scale.

The step here divides the scale out of the gradients as soon as they are
taken (`unscale`), so that the balancer and the non-finite checks see the
true gradients, and multiplies it back in (`rescale`) for
`optimizer.apply`. The scale is a power of two, so both are exact. A
gradient that overflowed is then the optimizer's to handle, not a fault
(`mask_overflow`): the step is skipped by the optimizer, the balancer's
state is left as it was, and training goes on, as with a plain
`keras.Model`.
"""

from keras import ops

from keras_olm.trainers.state import any_non_finite


def scales_loss(optimizer):
    """Whether `optimizer` expects a scaled loss: a `LossScaleOptimizer`,
    or any optimizer given a `loss_scale_factor`."""
    if optimizer is None:
        return False
    return hasattr(optimizer, "dynamic_scale") or (
        getattr(optimizer, "loss_scale_factor", None) is not None
    )


def current_scale(optimizer):
    """The optimizer's loss scale now, a float32 scalar tensor."""
    return ops.cast(optimizer.scale_loss(ops.ones((), "float32")), "float32")


def unscale(grads, scale):
    """`grads` (a list, `None` entries kept) divided by `scale`."""
    return [None if g is None else g / ops.cast(scale, g.dtype) for g in grads]


def rescale(grads, scale):
    """`grads` multiplied by `scale`, for the optimizer's `apply`."""
    return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]


def mask_overflow(flags, gradient_flags, state_flag, grads):
    """The step's fault flags with a gradient overflow left to the optimizer.

    Args:
        flags: list of bool scalars, the step's checks in `fault_names`
            order.
        gradient_flags: list of int. Indices of the gradient checks.
        state_flag: int. Index of the balancer-state check.
        grads: list of tensors. The step's unscaled gradients.

    Returns:
        `(flags, overflow)`: the flags with the gradient and state checks
        cleared on a step whose gradients overflowed, and `overflow`, a
        bool scalar.
    """
    overflow = any_non_finite(grads)
    kept = ops.logical_not(overflow)
    flags = list(flags)
    for i in [*gradient_flags, state_flag]:
        flags[i] = ops.logical_and(flags[i], kept)
    return flags, overflow


__all__ = [
    "current_scale",
    "mask_overflow",
    "rescale",
    "scales_loss",
    "unscale",
]
