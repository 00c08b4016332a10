"""OGM-GE (Peng et al., CVPR 2022): Eq. 8-10 and the gradient noise."""

import math

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

from keras_olm.balancers import OGMGE
from keras_olm.balancers import StepRecord
from keras_olm.balancers import ogm_ge

LN3 = math.log(3.0)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def batch():
    # fast: true-class probability 3/(3+1) = 0.75 on both samples, s = 1.5.
    # slow: all logits 0, probability 0.5 on both samples, s = 1.0.
    y = np.array([0, 1], "int32")
    logits = {
        "fast": np.array([[LN3, 0.0], [0.0, LN3]], "float32"),
        "slow": np.zeros((2, 2), "float32"),
    }
    return y, logits


def test_scores_ratios_and_both_coefficient_forms():
    y, logits = batch()
    s_fast = float(np_(ogm_ge.true_class_scores(y, logits["fast"])))
    s_slow = float(np_(ogm_ge.true_class_scores(y, logits["slow"])))
    assert s_fast == pytest.approx(1.5, rel=1e-6)
    assert s_slow == pytest.approx(1.0, rel=1e-6)
    ratios = np_(ogm_ge.discrepancy_ratios([1.5, 1.0]))
    np.testing.assert_allclose(ratios, [1.5, 2.0 / 3.0], rtol=1e-6)
    # shifted: 1 - tanh(0.5 * (1.5 - 1)) = 1 - tanh(0.25) = 0.7550813.
    k = np_(ogm_ge.modulation_coefficients(ratios, 0.5, "shifted"))
    np.testing.assert_allclose(k, [0.7550813, 1.0], rtol=1e-6)
    # paper (Eq. 10 as printed): 1 - tanh(0.5 * 1.5) = 0.3648510.
    k = np_(ogm_ge.modulation_coefficients(ratios, 0.5, "paper"))
    np.testing.assert_allclose(k, [0.3648510, 1.0], rtol=1e-6)


def test_three_modalities_use_the_mean_of_the_others():
    # 3 / mean(1, 2) = 2; 1 / mean(3, 2) = 0.4; 2 / mean(3, 1) = 1.
    ratios = np_(ogm_ge.discrepancy_ratios([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(ratios, [2.0, 0.4, 1.0], rtol=1e-6)


def test_gradient_std_is_unbiased():
    g = np.array([[1.0, 2.0], [3.0, 6.0]], "float32")
    # mean 3, squared deviations 4 + 1 + 0 + 9 = 14, / (4 - 1).
    assert float(np_(ogm_ge.gradient_std(g))) == pytest.approx(
        math.sqrt(14.0 / 3.0), rel=1e-6
    )


def modulated_gradients(balancer, seed=0):
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    variables = model.trainable_variables
    rng = np.random.default_rng(seed)
    grads = [
        keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
        for v in variables
    ]
    y, logits = batch()
    step = StepRecord(
        y=y, logits=logits, finite=keras.ops.convert_to_tensor(True)
    )
    groups = model._gradient_groups_by_modality()
    out = balancer.apply_transform_gradients(grads, variables, groups, step)
    return model, groups, [np_(g) for g in grads], [np_(g) for g in out]


def test_dominant_encoder_gradient_is_scaled_by_the_coefficient():
    balancer = OGMGE(alpha=0.5, generalization_enhancement=False)
    model, groups, grads, out = modulated_gradients(balancer)
    fast, slow = set(groups["fast"]), set(groups["slow"])
    assert fast and slow
    for j, (g, o) in enumerate(zip(grads, out)):
        # Only the dominant (fast) encoder is scaled, by 1 - tanh(0.25).
        factor = 0.7550813 if j in fast else 1.0
        np.testing.assert_allclose(o, factor * g, rtol=1e-5, err_msg=str(j))
    np.testing.assert_allclose(
        np_(balancer.coefficients), [0.7550813, 1.0], rtol=1e-6
    )
    assert int(np_(balancer.steps)) == 1


def test_generalization_enhancement_noise_has_the_gradient_spread():
    balancer = OGMGE(alpha=0.5, seed=7)
    model, groups, grads, out = modulated_gradients(balancer)
    # The slow encoder's kernel (64 x 16 entries) has coefficient 1, so
    # what changed is the noise alone: zero mean, std of the gradient.
    j = max(groups["slow"], key=lambda i: grads[i].size)
    noise = out[j] - grads[j]
    assert grads[j].size == 64 * 16
    assert abs(noise.mean()) < 0.1
    assert noise.std() == pytest.approx(grads[j].std(ddof=1), rel=0.1)
    # The heads' gradients get no noise.
    encoder = set(groups["fast"]) | set(groups["slow"])
    for i in set(range(len(grads))) - encoder:
        np.testing.assert_array_equal(out[i], grads[i])


def test_modulation_window_in_epochs():
    balancer = OGMGE(
        alpha=0.5,
        generalization_enhancement=False,
        modulation_starts=1,
        modulation_ends=1,
        steps_per_epoch=2,
    )
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    y, logits = batch()
    step = StepRecord(
        y=y, logits=logits, finite=keras.ops.convert_to_tensor(True)
    )
    groups = model._gradient_groups_by_modality()
    variables = model.trainable_variables
    j = groups["fast"][0]
    seen = []
    for _ in range(6):  # epochs 0, 0, 1, 1, 2, 2
        grads = [keras.ops.ones(v.shape) for v in variables]
        out = balancer.apply_transform_gradients(grads, variables, groups, step)
        seen.append(round(float(np_(out[j]).ravel()[0]), 5))
    assert seen == [1.0, 1.0, 0.75508, 0.75508, 1.0, 1.0]


def test_non_finite_step_keeps_the_state():
    balancer = OGMGE(alpha=0.5, generalization_enhancement=False)
    model, groups, grads, out = modulated_gradients(balancer)
    y, logits = batch()
    bad = StepRecord(
        y=y,
        logits={"fast": logits["slow"], "slow": logits["fast"]},
        finite=keras.ops.convert_to_tensor(False),
    )
    variables = model.trainable_variables
    balancer.apply_transform_gradients(
        [keras.ops.ones(v.shape) for v in variables], variables, groups, bad
    )
    np.testing.assert_allclose(
        np_(balancer.coefficients), [0.7550813, 1.0], rtol=1e-6
    )
    assert int(np_(balancer.steps)) == 1


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="coefficient_form"):
        OGMGE(coefficient_form="nope")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        OGMGE(modulation_ends=5)
    with pytest.raises(ValueError, match="at least 2"):
        OGMGE().build_heads(["audio", "fused"], 3)
