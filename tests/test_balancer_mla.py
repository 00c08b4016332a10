"""MLA (Zhang et al., CVPR 2024): alternation, projection, fusion."""

import math

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

import keras_olm
from keras_olm.balancers import MLA
from keras_olm.balancers import StepRecord
from keras_olm.balancers import mla


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_projector_update_and_projection_by_hand():
    # P = I, r = (1, 0), α = 1: P - e1 e1ᵀ / 2 = diag(1/2, 1), then over
    # its Frobenius norm sqrt(5/4): diag(0.4472136, 0.8944272).
    features = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    p = np_(mla.update_projector(np.eye(2, dtype="float32"), features, 1.0))
    np.testing.assert_allclose(p, np.diag([0.4472136, 0.8944272]), 1e-6)
    # The kernel (dim, units) gradient is P ∇W: the component along r is
    # damped relative to the others.
    grad = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    np.testing.assert_allclose(
        np_(mla.project_gradient(p, grad)), p @ grad, rtol=1e-6
    )
    # A direction already projected out stays out: r = (1, 0) again with
    # a tiny α leaves P e1 ≈ 0.
    p = np_(mla.update_projector(np.eye(2, dtype="float32"), features, 1e-6))
    np.testing.assert_allclose(p @ [1.0, 0.0], [0.0, 0.0], atol=1e-5)


def test_uncertainty_fusion_by_hand():
    # a: logits (0, 0), entropy ln 2; b: probabilities (3/4, 1/4),
    # entropy 0.5623351. λ ∝ exp(max e - e): (1, exp(0.1308121)), so
    # λ = (0.4673436, 0.5326564); fused = λ_b · (ln 3, 0).
    a = np.zeros((1, 2), "float32")
    b = np.array([[math.log(3.0), 0.0]], "float32")
    weights = np_(mla.entropy_weights([a, b]))
    np.testing.assert_allclose(weights[:, 0], [0.4673436, 0.5326564], 1e-5)
    fused = np_(mla.uncertainty_fusion([a, b]))
    np.testing.assert_allclose(fused, [[0.5851829, 0.0]], rtol=1e-5)
    layer = keras_olm.balancers.UncertaintyFusion()
    np.testing.assert_allclose(np_(layer({"a": a, "b": b})), fused, 1e-6)


def built_model(**kwargs):
    balancer = MLA(**kwargs)
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    return model, balancer


def test_heads_are_shared_and_predict_fuses_them():
    model, _ = built_model()
    assert model.heads["fast"] is model.heads["slow"]
    assert isinstance(model.heads["fused"], mla.UncertaintyFusion)
    x = {
        "fast": np.random.default_rng(0).normal(size=(4, 16)),
        "slow": np.random.default_rng(1).normal(size=(4, 64)),
    }
    logits = model.head_logits(x)
    expected = mla.uncertainty_fusion([logits["fast"], logits["slow"]])
    np.testing.assert_allclose(np_(logits["fused"]), np_(expected), 1e-6)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        probs, np_(keras.ops.softmax(expected)), rtol=1e-5
    )


def test_loss_alternates_between_the_modalities():
    model, balancer = built_model()
    y = np.array([0, 1], "int32")
    logits = {
        "fast": np.zeros((2, 2), "float32"),
        "slow": np.array([[5.0, 0.0], [0.0, 5.0]], "float32"),
        "fused": np.zeros((2, 2), "float32"),
    }
    total, head_losses = balancer.compute_loss(y, logits)
    ce_slow = math.log(1 + math.exp(-5.0))
    np.testing.assert_allclose(
        np_(head_losses), [math.log(2), ce_slow, math.log(2)], rtol=1e-5
    )
    assert float(np_(total)) == pytest.approx(math.log(2), rel=1e-5)
    balancer.steps.assign(1)
    total, _ = balancer.compute_loss(y, logits)
    assert float(np_(total)) == pytest.approx(ce_slow, rel=1e-4)
    balancer.steps.assign(2)
    total, _ = balancer.compute_loss(y, logits)
    assert float(np_(total)) == pytest.approx(math.log(2), rel=1e-5)


def test_transform_gradients_projects_the_shared_kernel_only():
    model, balancer = built_model(alpha=0.5)
    head = model.heads["fast"]
    variables = model.trainable_variables
    groups = model._gradient_groups_by_modality()
    grads = [keras.ops.ones(v.shape) for v in variables]
    rng = np.random.default_rng(0)
    features = {
        "fast": rng.normal(size=(4, 16)).astype("float32"),
        "slow": rng.normal(size=(4, 16)).astype("float32"),
    }

    def step():
        return StepRecord(
            y=None,
            logits={},
            finite=keras.ops.convert_to_tensor(True),
            features=features,
        )

    # Step 0 (the official `exp_count == 0`): nothing projected, P = I.
    out = balancer.apply_transform_gradients(grads, variables, groups, step())
    for g in out:
        np.testing.assert_array_equal(np_(g), 1.0)
    np.testing.assert_array_equal(np_(head.projector), np.eye(16))
    # Step 1 trains "slow": P is updated with slow's mean feature and the
    # kernel gradient projected; the bias and the encoders are not.
    out = balancer.apply_transform_gradients(grads, variables, groups, step())
    p = np_(mla.update_projector(np.eye(16), features["slow"], 0.5))
    np.testing.assert_allclose(np_(head.projector), p, rtol=1e-5, atol=1e-7)
    for j, v in enumerate(variables):
        expected = p @ np.ones(v.shape) if v is head.kernel else 1.0
        np.testing.assert_allclose(np_(out[j]), expected, 1e-5, 1e-7)
    assert int(np_(balancer.steps)) == 2


def test_alpha_decays_within_an_epoch():
    _, balancer = built_model(alpha=0.1, steps_per_epoch=4)
    # The official 0.1^(1 + i / n): 0.1 at i = 0, 0.1^1.5 at i = 2.
    assert float(np_(balancer._alpha(0))) == pytest.approx(0.1)
    assert float(np_(balancer._alpha(6))) == pytest.approx(0.1**1.5)


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="alpha"):
        MLA(alpha=0.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        MLA(steps_per_epoch=0)
    with pytest.raises(ValueError, match="at least 2"):
        MLA().build_heads(["audio", "fused"], 3)
    model = keras_olm.BalancedMultimodalModel(
        {
            "fast": keras.layers.Dense(8),
            "slow": keras.layers.Dense(16),
        },
        num_classes=2,
        balancer=MLA(),
    )
    with pytest.raises(ValueError, match="same width"):
        model.build({"fast": (None, 4), "slow": (None, 4)})
