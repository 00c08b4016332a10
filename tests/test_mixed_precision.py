"""Mixed precision: every balancer trains under `mixed_bfloat16` and
`mixed_float16`; the loss is scaled as Keras' own steps scale it."""

import keras
import numpy as np
import pytest
from olm_testing import set_weights_from_numpy
from olm_testing import tiny_model

from keras_olm import balancers

NAMES = sorted(n for n in balancers.REGISTRY if n != "multihead")


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "fast": rng.normal(size=(n, 16)).astype("float32"),
        "slow": rng.normal(size=(n, 64)).astype("float32"),
    }
    return x, rng.integers(0, 4, n)


def _float32_state(model):
    return [
        (v.path, v.dtype)
        for v in model.balancer.variables
        if "float" in str(v.dtype) and v.dtype != "float32"
    ]


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("name", NAMES)
def test_every_balancer_trains_under_mixed_bfloat16(policy, name):
    x, y = _data()
    model = tiny_model(balancer=name)
    model.compile(optimizer="adam")
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), key
    assert model.encoders["fast"].compute_dtype == "bfloat16"
    # Balancer state and the model's outputs stay float32.
    assert _float32_state(model) == []
    probs = np_(model(x))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = model.head_logits(x)
    assert all(np_(v).dtype == np.float32 for v in logits.values())


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
@pytest.mark.parametrize("name", ["olm", "pmr", "mmpareto"])
def test_mixed_float16_trains_with_keras_loss_scaling(policy, name):
    x, y = _data()
    model = tiny_model(balancer=name)
    model.compile(optimizer="adam")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert _float32_state(model) == []


def _one_sgd_step(policy_name, optimizer=None):
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        x, y = _data()
        model = tiny_model(balancer="heads")
        model.build({"fast": (None, 16), "slow": (None, 64)})
        set_weights_from_numpy(model, scale=0.1)
        model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1))
        before = [np_(v).copy() for v in model.trainable_variables]
        model.train_on_batch(x, y)
        after = [np_(v) for v in model.trainable_variables]
        return model, [a - b for a, b in zip(after, before)]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_float16_sgd_step_moves_the_weights_as_float32_does():
    # Gradients of the scaled loss, unscaled by the optimizer: the step is
    # the float32 one up to float16 rounding (without the scaling it was
    # 2^15 times too small).
    _, reference = _one_sgd_step("float32")
    model, moved = _one_sgd_step("mixed_float16")
    assert float(np_(model.optimizer.dynamic_scale)) == 2.0**15
    for ref, got in zip(reference, moved):
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, atol=2e-2 * scale)


def test_an_overflowing_float16_step_is_skipped_and_the_scale_lowered():
    # As Keras' LossScaleOptimizer does with a plain keras.Model: a scale
    # that overflows float16 gradients skips the step, halves the scale,
    # and raises nothing.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**40
    )
    model, moved = _one_sgd_step("mixed_float16", optimizer)
    assert all(np.all(d == 0) for d in moved)
    assert float(np_(model.optimizer.dynamic_scale)) == 2.0**39
    # Not a fault; the step counts (its batch was read).
    assert not np_(model.training_state.faults)[:-1].any()
    assert int(np_(model.training_state.steps)) == 1
