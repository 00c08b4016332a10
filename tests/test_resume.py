"""Resuming training: a run split in two gives the uninterrupted run.

Each test trains one run straight through and one interrupted after two
of four epochs, then resumed from what was saved (`load_model`,
`BackupAndRestore`, a weights-only checkpoint), on the same backend with
the same input order; the held-out schedule (every 3 steps, 4 steps an
epoch: it does not restart with the epoch) must continue where it stood.
A `BackupAndRestore` that saves every step and is interrupted in the
middle of an epoch must resume at the batch it stopped at.
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_olm
from tests.olm_testing import tiny_model

EPOCHS, SPLIT = 4, 2


def np_(v):
    return keras.ops.convert_to_numpy(v)


def make_balancer(name):
    if name == "olm":
        return keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule(every=3)
        )
    if name == "gblend":
        return keras_olm.balancers.GBlend(held_out_every=3)
    return name


@pytest.fixture(scope="module")
def data():
    x, y = keras_olm.synthetic.make_imbalanced(128, num_classes=4, seed=0)
    held_out = keras_olm.synthetic.make_imbalanced(96, num_classes=4, seed=1)
    return x, y, held_out


def new_model(balancer):
    keras.utils.set_random_seed(0)
    model = tiny_model(make_balancer(balancer))
    model.compile(optimizer="adam")
    return model


def train(model, data, epochs, initial_epoch=0, callbacks=None):
    x, y, held_out = data
    return model.fit(
        x,
        y,
        batch_size=32,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        held_out_data=held_out,
        callbacks=callbacks,
        verbose=0,
    )


def state(model):
    """Every weight of the model and its optimizer, in order."""
    return [(v.name, np_(v)) for v in model.weights + model.optimizer.variables]


def assert_same_run(resumed, straight, history, straight_history):
    a, b = state(resumed), state(straight)
    # Names differ (a loaded optimizer names its variables anew); the
    # order is the same.
    assert len(a) == len(b)
    for (_, value), (name, expected) in zip(a, b):
        np.testing.assert_allclose(
            value, expected, rtol=1e-6, atol=1e-6, err_msg=name
        )
    # The loss of the epochs after the split.
    np.testing.assert_allclose(
        history.history["loss"],
        straight_history.history["loss"][SPLIT:],
        rtol=1e-6,
    )


@pytest.fixture(scope="module")
def straight_runs(data):
    runs = {}

    def run(balancer):
        if balancer not in runs:
            model = new_model(balancer)
            runs[balancer] = model, train(model, data, EPOCHS)
        return runs[balancer]

    return run


BALANCERS = [
    "olm",
    "gblend",
    "heads",
    "joint",
    "ogm_ge",
    "gradnorm",
    "pmr",
    "mmcosine",
    "agm",
    "mla",
    "mmpareto",
]


@pytest.mark.parametrize("balancer", BALANCERS)
def test_load_model_resumes_exactly(balancer, data, straight_runs, tmp_path):
    straight, straight_history = straight_runs(balancer)
    first = new_model(balancer)
    train(first, data, SPLIT)
    path = os.path.join(tmp_path, "run.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    history = train(resumed, data, EPOCHS, initial_epoch=SPLIT)
    assert_same_run(resumed, straight, history, straight_history)


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("balancer", ["olm", "gblend"])
def test_backup_and_restore_resumes_exactly(
    balancer, data, straight_runs, tmp_path
):
    straight, straight_history = straight_runs(balancer)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    first = new_model(balancer)
    with pytest.raises(KeyboardInterrupt):
        train(first, data, EPOCHS, callbacks=[backup, StopAt(SPLIT)])
    resumed = new_model(balancer)
    history = train(resumed, data, EPOCHS, callbacks=[backup])
    assert_same_run(resumed, straight, history, straight_history)


@pytest.mark.parametrize("balancer", ["olm", "pmr", "mla"])
def test_weights_checkpoint_resumes_exactly(
    balancer, data, straight_runs, tmp_path
):
    straight, straight_history = straight_runs(balancer)
    path = os.path.join(tmp_path, "epoch{epoch}.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    first = new_model(balancer)
    train(first, data, EPOCHS, callbacks=[checkpoint])
    # A fresh, compiled model: `load_weights` also restores the optimizer.
    resumed = new_model(balancer)
    resumed.build({"fast": (None, 16), "slow": (None, 64)})
    resumed.load_weights(path.format(epoch=SPLIT))
    assert int(np_(resumed.training_state.steps)) == SPLIT * 4
    history = train(resumed, data, EPOCHS, initial_epoch=SPLIT)
    assert_same_run(resumed, straight, history, straight_history)


def test_split_fits_read_the_held_out_batches_of_one_fit(data):
    """Two `fit` calls of 2 epochs read held-out data on the steps and in
    the order one `fit` of 4 epochs does (global steps 0, 3, 6, ...)."""
    straight = new_model("olm")
    train(straight, data, EPOCHS)
    split = new_model("olm")
    train(split, data, SPLIT)
    train(split, data, EPOCHS, initial_epoch=SPLIT)
    assert int(np_(split.training_state.steps)) == EPOCHS * 4
    assert int(np_(split.balancer.held_out_steps)) == 6  # steps 0, 3, .., 15
    for name in ("coefficients", "held_out_losses", "lambdas"):
        np.testing.assert_allclose(
            np_(getattr(split.balancer, name)),
            np_(getattr(straight.balancer, name)),
            rtol=1e-6,
            atol=1e-7,
            err_msg=name,
        )


class StopAtBatch(keras.callbacks.Callback):
    """Interrupts `fit` as batch `batch` of epoch `epoch` begins."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise KeyboardInterrupt


def interrupted(balancer, data, backup_dir, stop):
    """A run backed up every step and interrupted at `stop`."""
    model = new_model(balancer)
    backup = keras.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    with pytest.raises(KeyboardInterrupt):
        train(model, data, EPOCHS, callbacks=[backup, stop])


@pytest.mark.parametrize("balancer", BALANCERS)
def test_backup_in_steps_resumes_at_the_batch_it_stopped_at(
    balancer, data, straight_runs, tmp_path
):
    """Interrupted before batch 2 of epoch 2 (backed up after batch 1),
    a fresh process's `fit` passes over the epoch's first two batches:
    the global step, the losses (the whole epoch's) and every state are
    the uninterrupted run's."""
    straight, straight_history = straight_runs(balancer)
    interrupted(balancer, data, str(tmp_path), StopAtBatch(SPLIT, 2))
    resumed = new_model(balancer)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
    history = train(resumed, data, EPOCHS, callbacks=[backup])
    assert int(np_(resumed.training_state.steps)) == EPOCHS * 4
    assert_same_run(resumed, straight, history, straight_history)


def test_backup_in_steps_after_an_epoch_ends_runs_only_its_end(
    data, straight_runs, tmp_path
):
    """Backed up after the last batch of epoch 1 and interrupted before
    epoch 2: the resumed `fit` passes over all of epoch 1 and reports it
    as the uninterrupted run did, then trains epochs 2 and 3."""
    straight, straight_history = straight_runs("olm")
    interrupted("olm", data, str(tmp_path), StopAt(SPLIT))
    resumed = new_model("olm")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
    history = train(resumed, data, EPOCHS, callbacks=[backup])
    assert int(np_(resumed.training_state.steps)) == EPOCHS * 4
    np.testing.assert_allclose(
        history.history["loss"],
        straight_history.history["loss"][SPLIT - 1 :],
        rtol=1e-6,
    )
    for (_, value), (name, expected) in zip(state(resumed), state(straight)):
        np.testing.assert_allclose(value, expected, atol=1e-6, err_msg=name)


def test_backup_in_steps_survives_a_second_interruption(
    data, straight_runs, tmp_path
):
    """Interrupted twice in epoch 2 (before batch 1, then before batch 3
    of the resumed run): the second backup names epoch 2 and batch 2 (a
    fresh Keras `BackupAndRestore` would name epoch 0), and the run ends
    as the uninterrupted one."""
    straight, straight_history = straight_runs("olm")
    interrupted("olm", data, str(tmp_path), StopAtBatch(SPLIT, 1))
    interrupted("olm", data, str(tmp_path), StopAtBatch(SPLIT, 3))
    with open(os.path.join(tmp_path, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": SPLIT, "batch": 2}
    resumed = new_model("olm")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
    history = train(resumed, data, EPOCHS, callbacks=[backup])
    assert_same_run(resumed, straight, history, straight_history)


def test_backup_in_steps_with_shuffled_arrays_warns_once(data, tmp_path):
    x, y, held_out = data
    model = new_model("olm")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=EPOCHS,
            held_out_data=held_out,
            callbacks=[backup, StopAtBatch(1, 2)],
            verbose=0,
        )
    resumed = new_model("olm")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
    with pytest.warns(UserWarning, match="shuffled") as caught:
        resumed.fit(
            x,
            y,
            batch_size=32,
            epochs=EPOCHS,
            held_out_data=held_out,
            callbacks=[backup],
            verbose=0,
        )
    assert sum("shuffled" in str(w.message) for w in caught) == 1
    assert int(np_(resumed.training_state.steps)) == EPOCHS * 4
