"""The callbacks `fit` puts first: the non-finite guard and the log order.

`NonFiniteGuard` turns the training step's fault vector into a
`NonFiniteLossError`; `LogOrder` puts the logs in the order the progress
bar shows them (`ordered_logs`).
"""

import keras

from keras_olm.layers.base import FUSED
from keras_olm.trainers.state import FAULTS_LOG
from keras_olm.trainers.state import NonFiniteLossError
from keras_olm.trainers.state import raise_if_faulted


def ordered_logs(logs, modalities, regression_targets=()):
    """`logs` in the order the progress bar shows them.

    The loss, the compiled metrics, the fused head's loss and accuracy,
    regression errors, each modality's loss and accuracy, the balancer's
    logs (e.g. OLM's coefficients) in head order; then the same for the
    `val_` logs.
    """
    heads = [FUSED, *modalities]
    prefixes = tuple(f"{h}_" for h in heads)
    per_head = [f"{h}_{k}" for h in heads for k in ("loss", "acc")]
    regression = [
        f"{n}_{k}" for n in regression_targets for k in ("mse", "mae")
    ]

    def order(keys):
        compiled = [
            k
            for k in keys
            if k != "loss"
            and k not in regression
            and not k.startswith(prefixes)
        ]
        first = ["loss", *compiled, *per_head[:2], *regression, *per_head[2:]]
        rest = [
            k
            for h in [*modalities, FUSED]
            for k in keys
            if k.startswith(f"{h}_") and k not in first
        ]
        known = [k for k in first + rest if k in keys]
        return known + [k for k in keys if k not in known]

    train = [k for k in logs if not k.startswith("val_")]
    val = [k[len("val_") :] for k in logs if k.startswith("val_")]
    keys = order(train) + ["val_" + k for k in order(val)]
    return {k: logs[k] for k in dict.fromkeys(keys)}


class LogOrder(keras.callbacks.Callback):
    """Puts the logs every later callback sees (the progress bar, History)
    in `ordered_logs`' order; Keras hands them over sorted by name."""

    def __init__(self, modalities, regression_targets=()):
        super().__init__()
        self.modalities = list(modalities)
        self.regression_targets = list(regression_targets)
        self._orders = {}

    def _reorder(self, logs):
        if not logs:
            return
        # The keys repeat from step to step: their order is worked out once.
        keys = tuple(logs)
        order = self._orders.get(keys)
        if order is None:
            order = tuple(
                ordered_logs(
                    dict.fromkeys(keys),
                    self.modalities,
                    self.regression_targets,
                )
            )
            self._orders[keys] = order
        values = dict(logs)
        logs.clear()
        logs.update((k, values[k]) for k in order)

    def on_train_batch_end(self, batch, logs=None):
        self._reorder(logs)

    def on_test_batch_end(self, batch, logs=None):
        self._reorder(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._reorder(logs)


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first step with a NaN or an infinity.

    The step checks its loss, every head's loss, the gradients, the
    held-out losses and the balancer's new state, and applies nothing when
    one of them is not finite. This callback reads those checks from the
    logs (and removes them, so that no later callback sees them) and
    raises `NonFiniteLossError` naming what was not finite, the epoch and
    the step. It must come first among the callbacks.

    Args:
        fault_names: list of str. What each check covers, in order.
    """

    def __init__(self, fault_names):
        super().__init__()
        self.fault_names = list(fault_names)
        self.epoch = 0
        self.first_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.first_step = self.model.training_state.global_step()

    def on_train_batch_end(self, batch, logs=None):
        def when(global_step):
            step = global_step - self.first_step + 1
            return (
                f"epoch {self.epoch + 1}, step {step} (global step "
                f"{global_step})"
            )

        try:
            raise_if_faulted(logs, self.fault_names, when)
        except NonFiniteLossError:
            self.model.stop_training = True
            raise

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            logs.pop(FAULTS_LOG, None)
