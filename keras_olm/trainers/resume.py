"""Resuming in the middle of an epoch from `keras.callbacks.BackupAndRestore`.

With `save_freq` in steps, `BackupAndRestore` saves the weights after
batch b of epoch e and writes `{"epoch": e, "batch": b}` beside them. On
restart, Keras restores the weights and starts epoch e again from its
first batch: the batches 0..b, already trained, would be trained twice.
`MidEpochResume` reads where the backup stopped, and the first b + 1
batches of epoch e are passed over: each backend's train function takes
them from the input iterator and runs no step on them (`batches_to_pass`),
returning the logs as they stood (`passed_logs`); callbacks see those
batches with those logs. The epoch's metrics, saved with the weights by
`BalancedMultimodalModel.save_own_variables`, are restored after Keras
resets them at the start of the epoch, so the epoch's logs are those of
an uninterrupted run. The global step, saved with the weights, puts the
held-out feed and the balancer where they stood.
"""

import json
import os
import warnings

import keras

#: The warning a mid-epoch resume gives when the training arrays are
#: shuffled: Keras' shuffle after a restart is not the interrupted run's.
SHUFFLED_RESUME = (
    "Resuming from a BackupAndRestore backup in the middle of epoch {epoch} "
    "({done} batches trained): those batches are passed over, so the "
    "global step, the held-out schedule and the balancer state continue "
    "where they stood, but the arrays are shuffled (`shuffle=True`), so "
    "the rest of this epoch reads a new permutation of the samples, not "
    "the batches the interrupted run had left. Pass `shuffle=False` (or a "
    "dataset in a fixed order) for a resume that gives the uninterrupted "
    "run."
)


def resume_point(backup):
    """Where a `BackupAndRestore` backup stopped: `(epoch, batches)`.

    Args:
        backup: a `keras.callbacks.BackupAndRestore`, after its
            `on_train_begin` (which restored the model).

    Returns:
        `(epoch, batches)`: the epoch the backup resumes and how many of
        its batches were trained before it was saved (0 for a backup made
        at the end of an epoch), or `None` when there is no backup.
    """
    path = getattr(backup, "_training_metadata_path", None)
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        metadata = json.load(f)
    epoch = int(metadata["epoch"])
    if backup.save_freq == "epoch":
        return epoch, 0
    return epoch, int(metadata.get("batch", -1)) + 1


class MidEpochResume(keras.callbacks.Callback):
    """Passes over the batches a `BackupAndRestore` backup trained already.

    `fit` puts it after every other callback, so its `on_train_begin`
    runs after `BackupAndRestore` restored the model. It also keeps each
    `BackupAndRestore`'s epoch count right: Keras' callback counts epochs
    from 0 in every `fit`, so a backup saved before the first epoch of a
    resumed `fit` ends would name epoch 0.

    Args:
        callbacks: the callbacks of the `fit` call.
        shuffled: bool. Whether Keras shuffles the training arrays.
    """

    def __init__(self, callbacks, shuffled=False):
        super().__init__()
        self.backups = [
            c
            for c in callbacks
            if isinstance(c, keras.callbacks.BackupAndRestore)
        ]
        self.shuffled = shuffled
        self.pending = None

    def on_train_begin(self, logs=None):
        # (a `fit` interrupted while passing batches over leaves a count)
        self.model._batches_to_pass = 0
        self.pending = None
        for backup in self.backups:
            point = resume_point(backup)
            if point is None or not point[1]:
                continue
            epoch, done = point
            values = [
                keras.ops.convert_to_numpy(v)
                for v in self.model.metrics_variables
            ]
            self.pending = epoch, done, values
            # The backup saved after batch `done - 1` and counts from
            # there: the batches passed over count towards its next save.
            backup._batches_seen_since_last_saving = -done
            if self.shuffled:
                warnings.warn(
                    SHUFFLED_RESUME.format(epoch=epoch, done=done),
                    stacklevel=2,
                )
            return

    def on_epoch_begin(self, epoch, logs=None):
        for backup in self.backups:
            backup._current_epoch = epoch
        if self.pending is None:
            return
        resumed, done, values = self.pending
        self.pending = None
        if epoch != resumed:
            return
        # Keras reset the metrics as the epoch began; the backup's values
        # are those of its first `done` batches.
        for variable, value in zip(self.model.metrics_variables, values):
            variable.assign(value)
        self.model._batches_to_pass = done

    def on_train_end(self, logs=None):
        self.model._batches_to_pass = 0


def batches_to_pass(model, steps):
    """How many of the next `steps` batches a train function passes over
    (taken from the input, no step run); counts them off."""
    left = getattr(model, "_batches_to_pass", 0)
    if not left:
        return 0
    passed = min(left, steps)
    model._batches_to_pass = left - passed
    return passed


def passed_logs(model):
    """The logs of a call whose batches were all passed over: the metrics
    and the balancer's logs as they stand."""
    logs = dict(model.get_metrics_result())
    logs.update(model.balancer.step_logs())
    return logs
