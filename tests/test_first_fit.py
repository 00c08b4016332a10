"""The first `fit`: how often the training step is traced, and that the
held-out losses measured before a step are those measured inside it."""

import keras
import numpy as np
import pytest
from olm_testing import set_weights_from_numpy
from olm_testing import tiny_encoder

import keras_olm
from keras_olm import held_out as held_out_lib
from keras_olm.trainers import step as step_lib

BACKEND = keras.backend.backend()


def _data(n=96, seed=0):
    x, y = keras_olm.synthetic.make_imbalanced(n, num_classes=3, seed=seed)
    return x, y


def _model(every=2):
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(8), "slow": tiny_encoder(8)},
        num_classes=3,
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("periodic", every)
        ),
    )
    model.build({"fast": (None, 16), "slow": (None, 64)})
    set_weights_from_numpy(model)
    return model


@pytest.fixture
def traces(monkeypatch):
    """Counts the traces of the shared training step (each compiled trace
    runs the Python step once; eager torch runs it once per step)."""
    calls = []
    original = step_lib.TrainingStep._train_step

    def counted(self, data):
        calls.append(held_out_lib.unpack(data).held_out)
        return original(self, data)

    monkeypatch.setattr(step_lib.TrainingStep, "_train_step", counted)
    return calls


@pytest.mark.skipif(BACKEND == "torch", reason="torch runs steps eagerly")
def test_olm_traces_its_training_step_once(traces):
    # 96 samples, batch 16: 6 full batches an epoch, a held-out batch on
    # every second step, from a held-out set of two batches.
    x, y = _data()
    held_out = _data(32, seed=1)
    model = _model()
    model.compile(optimizer="adam")
    weights = [v.path for v in model.weights]
    model.fit(x, y, batch_size=16, epochs=2, held_out_data=held_out, verbose=0)
    assert len(traces) == 1
    # What carries the measured losses is not part of the model.
    assert [v.path for v in model.weights] == weights
    assert int(model.balancer.held_out_steps) == 6
    # A step with held-out data reads losses measured before it.
    assert not isinstance(traces[0], held_out_lib.HeldOutBatch)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's tracing")
def test_the_optimizer_is_built_before_the_first_trace(traces):
    x, y = _data()
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(8), "slow": tiny_encoder(8)},
        num_classes=3,
        balancer=None,
    )
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # A `tf.function` that makes variables is traced a second time.
    assert len(traces) == 1
    assert model.optimizer.built


def _trained_state(steps_per_execution):
    keras.utils.set_random_seed(0)
    x, y = _data()
    held_out = _data(32, seed=1)
    model = _model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        steps_per_execution=steps_per_execution,
    )
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        held_out_data=held_out,
        shuffle=False,
        verbose=0,
    )
    return (
        keras.ops.convert_to_numpy(model.balancer.state.value),
        [keras.ops.convert_to_numpy(v) for v in model.trainable_variables],
    )


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch steps one batch a call, measured in it"
)
def test_losses_measured_before_the_step_equal_those_measured_in_it():
    # One step per call measures held-out losses before the step; two
    # steps per call measure them inside the step (a held-out batch added
    # to the training batch). Same data, weights and schedule.
    before_state, before_weights = _trained_state(1)
    inside_state, inside_weights = _trained_state(2)
    np.testing.assert_allclose(before_state, inside_state, atol=1e-5)
    for a, b in zip(before_weights, inside_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    rows = list(keras_olm.balancers.olm.STATE_ROWS)
    held_out = before_state[rows.index("held_out_losses")]
    assert np.all(held_out > 0)


def test_the_held_out_pipeline_does_not_autotune():
    import tensorflow as tf

    dataset = tf.data.Dataset.range(4).batch(2)
    for skip in (0, 1):
        rotated = held_out_lib.rotated(dataset, skip)
        assert rotated.options().autotune.enabled is False
        assert [int(b[0]) for b in rotated.take(3)] == [
            [0, 2][skip],
            [2, 0][skip],
            [0, 2][skip],
        ]


@pytest.mark.parametrize(
    "threads, cores, others, chosen",
    [(2, 2, 0, 2), (2, 2, 1, 1), (2, 2, 3, 1), (8, 16, 4, 8), (8, 8, 3, 5)],
)
def test_torch_threads_leave_the_busy_cores(threads, cores, others, chosen):
    pytest.importorskip("torch")
    from keras_olm.trainers import torch_trainer

    assert torch_trainer.cpu_threads_for_fit(threads, cores, others) == chosen
    # A tf.data pipeline keeps a core of those left.
    assert torch_trainer.cpu_threads_for_fit(
        threads, cores, others, pipeline=True
    ) == max(1, min(threads, cores - others - 1))
    assert torch_trainer.other_running_tasks(samples=3) >= 0


@pytest.mark.skipif(BACKEND != "torch", reason="torch's threads")
@pytest.mark.parametrize("others, during", [(0, 2), (1, 1)])
def test_torch_fit_takes_the_free_cores_and_gives_them_back(
    monkeypatch, others, during
):
    import os

    import torch

    from keras_olm.trainers import torch_trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(torch_trainer, "other_running_tasks", lambda: others)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []

    class Threads(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(torch.get_num_threads())

    try:
        x, y = _data(32)
        model = _model()
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=16, callbacks=[Threads()], verbose=0)
        assert set(seen) == {during}
        assert torch.get_num_threads() == 2
        # Fed by tf.data, fit leaves a core to the pipeline.
        import tensorflow as tf

        seen.clear()
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        model.fit(
            dataset,
            held_out_data=_data(32, seed=1),
            callbacks=[Threads()],
            verbose=0,
        )
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
        # A thread count the user fixed with OMP_NUM_THREADS is kept.
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        seen.clear()
        model.fit(x, y, batch_size=16, callbacks=[Threads()], verbose=0)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)
