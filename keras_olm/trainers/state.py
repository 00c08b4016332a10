"""The training step's own state, its non-finite checks and fault vector.

`TrainingState` counts the applied steps (the global step) and records
the first step of a `fit` that was not finite, as a fault vector: one
int flag per checked part of a step, then that step's global step. The
step puts the vector into its logs under `FAULTS_LOG`; `raise_if_faulted`
takes it out of the logs and raises `NonFiniteLossError` when a flag is
set, for `fit` (`NonFiniteGuard`) and `train_on_batch` alike.
`any_non_finite` is the check the step runs on each part.
"""

import keras
import numpy as np
from keras import ops

#: The log key under which a training step reports its non-finite checks;
#: `NonFiniteGuard` removes it before any other callback sees the logs.
FAULTS_LOG = "non_finite"


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produced a NaN or an infinity: in its
    loss, a head's loss, the gradients, the held-out losses or the
    balancer's new state."""


def is_float(value):
    """Whether `value` is a floating-point tensor."""
    return "float" in str(getattr(value, "dtype", ""))


#: Dtypes summed as they are by `any_non_finite`; others are cast to
#: float32 first (a float16 sum overflows sooner).
WIDE_FLOATS = ("float32", "float64")


def any_non_finite(tensors):
    """Whether any of `tensors` holds a NaN or an infinity (a bool scalar).

    One sum per tensor: a sum is NaN or infinite when an element is, and
    it reads each tensor once without writing a tensor of its size. A
    finite tensor whose sum overflows float32 counts as non-finite too.
    """
    sums = [
        ops.sum(
            t
            if keras.backend.standardize_dtype(t.dtype) in WIDE_FLOATS
            else ops.cast(t, "float32")
        )
        for t in tensors
        if t is not None
    ]
    if not sums:
        return ops.zeros((), "bool")
    return ops.logical_not(ops.isfinite(sum(sums[1:], sums[0])))


def _non_finite_error(fault_names, faults, when):
    """The `NonFiniteLossError` for a step's fault vector.

    Args:
        fault_names: list of str. What each check covers, in order.
        faults: int array. The fault vector (flags, then the global step).
        when: str. Which step, e.g. "epoch 1, step 3 (global step 2)".

    Returns:
        A `NonFiniteLossError` naming the parts that were not finite.
    """
    parts = [n for n, f in zip(fault_names, faults[:-1]) if f]
    return NonFiniteLossError(
        f"Non-finite values at {when} in: {'; '.join(parts)}. Training "
        "stopped; nothing of that step was applied: the weights, the "
        "optimizer state and the balancer state are as after the last "
        "finite step."
    )


def raise_if_faulted(logs, fault_names, when):
    """Takes the fault vector out of a step's logs; raises if it is set.

    Args:
        logs: dict. A training step's logs; `FAULTS_LOG` is removed from
            it (nothing happens when it is absent).
        fault_names: list of str. What each check covers, in order.
        when: callable. Takes the global step (int) of the step that was
            not finite and returns which step it was, in words (e.g.
            "epoch 1, step 3 (global step 2)").

    Raises:
        NonFiniteLossError: when any part of a step was not finite.

    Example:
    ```python
    logs = {"loss": 0.7, FAULTS_LOG: np.array([0, 1, 0, 4])}
    raise_if_faulted(logs, names, lambda step: f"global step {step}")
    # NonFiniteLossError: Non-finite values at global step 4 in: ...
    ```
    """
    faults = logs.pop(FAULTS_LOG, None) if logs else None
    if faults is None:
        return
    faults = np.asarray(faults).reshape(-1)
    if faults[:-1].any():
        raise _non_finite_error(fault_names, faults, when(int(faults[-1])))


@keras.saving.register_keras_serializable(package="keras_olm")
class TrainingState(keras.layers.Layer):
    """The training step's own state, saved with the model's weights.

    `steps` counts the training steps applied over every `fit` call (the
    global step): the held-out schedule and the position in the held-out
    set derive from it, so a resumed run reads the held-out batches an
    uninterrupted one would. `faults` holds the first non-finite step of
    the current `fit`: one flag per checked part (see
    `BalancedMultimodalModel.fault_names`) and that step's global step;
    all zeros while every step was finite. Once a step is not finite,
    every later step of the same compiled call is skipped as well.

    Args:
        num_checks: int. Number of checked parts of a step.
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    state = TrainingState(num_checks=3)
    faults, ok = state.record(ops.array([False, True, False]))
    state.count_step(ok)  # not counted: ok is False
    ```
    """

    def __init__(self, num_checks, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.num_checks = int(num_checks)
        self.steps = self.add_weight(
            name="steps",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )
        self.faults = self.add_weight(
            name="faults",
            shape=(self.num_checks + 1,),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )
        self.built = True

    def record(self, flags):
        """Records a step's checks.

        Args:
            flags: bool tensor `(num_checks,)`, True where a part of the
                step is not finite.

        Returns:
            `(faults, ok)`: the fault vector after this step and whether
            the step may be applied.
        """
        if flags.shape[0] != self.num_checks:
            raise ValueError(
                f"Expected {self.num_checks} checks; got {flags.shape[0]}."
            )
        earlier = self.faults.value
        current = ops.concatenate(
            [
                ops.cast(flags, "int32"),
                ops.reshape(self.steps.value, (1,)),
            ]
        )
        faults = ops.where(ops.any(earlier[:-1] > 0), earlier, current)
        self.faults.assign(faults)
        return faults, ops.logical_not(ops.any(faults[:-1] > 0))

    def count_step(self, ok):
        """Counts a step that was applied."""
        self.steps.assign(self.steps.value + ops.cast(ok, "int32"))

    def global_step(self):
        """The steps applied so far, over every `fit` call, as an int.

        Read from the variable itself, not its `value`: inside a
        `tf.distribute` strategy's scope the value of a mirrored variable
        is the mirrored variable, which numpy cannot convert.
        """
        return int(ops.convert_to_numpy(self.steps))

    def reset_faults(self):
        """Clears the faults; `fit` calls it before its first step."""
        self.faults.assign(ops.zeros_like(self.faults.value))

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config["num_checks"] = self.num_checks
        return config
