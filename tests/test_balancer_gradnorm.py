"""GradNorm (Chen et al., ICML 2018) on the per-head losses: Eq. 1."""

import math

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

from keras_olm.balancers import GradNorm
from keras_olm.balancers import StepRecord
from keras_olm.balancers import gradnorm


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_head_feature_gradient_norm_by_hand():
    # One sample, logits (0, 0), label 0: softmax - onehot = (-0.5, 0.5);
    # times Kᵀ with K = [[1, 0], [0, 1], [2, 2]] gives (-0.5, 0.5, 0).
    kernel = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], "float32")
    norm = gradnorm.head_feature_gradient_norm(
        np.array([0]), np.zeros((1, 2), "float32"), kernel
    )
    assert float(np_(norm)) == pytest.approx(math.sqrt(0.5), rel=1e-6)


def test_targets_loss_and_weight_step_by_hand():
    # w = 1, norms (3, 1, 2): G = (3, 1, 2), mean 2. Loss ratios
    # (0.5, 1.0, 0.75), mean 0.75: r = (2/3, 4/3, 1); α = 1 gives the
    # targets (4/3, 8/3, 2) and L_grad = 5/3 + 5/3 + 0 = 10/3.
    g, targets = gradnorm.gradnorm_targets(
        [1.0, 1.0, 1.0], [3.0, 1.0, 2.0], [0.5, 1.0, 0.75], [1.0] * 3, 1.0
    )
    np.testing.assert_allclose(np_(g), [3.0, 1.0, 2.0])
    np.testing.assert_allclose(np_(targets), [4 / 3, 8 / 3, 2.0], rtol=1e-6)
    loss = gradnorm.gradnorm_loss(g, targets)
    assert float(np_(loss)) == pytest.approx(10 / 3, rel=1e-6)
    grad = np_(gradnorm.gradnorm_weight_gradient(g, targets, [3.0, 1.0, 2.0]))
    np.testing.assert_allclose(grad, [3.0, -1.0, 0.0])
    # lr 0.1: (0.7, 1.1, 1.0), sum 2.8, renormalised to sum 3. The head
    # whose loss fell least (the second) gains weight; the fastest loses.
    w = np_(gradnorm.renormalize(np.array([1.0] * 3) - 0.1 * grad, 3.0))
    np.testing.assert_allclose(w, [0.75, 33 / 28, 15 / 14], rtol=1e-6)


def test_update_moves_weights_from_the_heads_kernels():
    balancer = GradNorm(alpha=1.0, learning_rate=0.1)
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    y = np.array([0, 1], "int32")
    logits = {
        h: np.array([[1.0, 0.0], [0.5, 0.5]], "float32")
        for h in model.head_names
    }
    losses = np.array([0.5, 1.0, 0.75], "float32")

    def measure(losses):
        return StepRecord(
            y=y,
            logits=logits,
            head_losses=keras.ops.convert_to_tensor(losses),
            finite=keras.ops.convert_to_tensor(True),
        )

    balancer.apply_update(measure(2 * losses))  # step 1: L(0) = 2 * losses
    balancer.apply_update(measure(losses))
    # Expected, in numpy: norms from each head's kernel, then Eq. 1.
    w = np.ones(3)
    norms = []
    for h in model.head_names:
        k = np_(model.heads[h].kernel)
        p = np.exp(logits[h]) / np.exp(logits[h]).sum(-1, keepdims=True)
        d = (p - np.eye(2)[y]) @ k.T / 2
        norms.append(np.sqrt((d**2).sum()))
    norms = np.array(norms)
    np.testing.assert_allclose(np_(balancer.grad_norms), norms, rtol=1e-5)
    for ratio in (np.ones(3), losses / (2 * losses)):
        g = w * norms
        target = g.mean() * (ratio / ratio.mean())
        w = np.maximum(w - 0.1 * np.sign(g - target) * norms, 1e-3)
        w = w * 3 / w.sum()
    np.testing.assert_allclose(np_(balancer.loss_weights), w, rtol=1e-5)
    np.testing.assert_allclose(np_(balancer.initial_losses), 2 * losses)
    assert int(np_(balancer.steps)) == 2


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="learning_rate"):
        GradNorm(learning_rate=0.0)
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(alpha=-1.0)
