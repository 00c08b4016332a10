"""MMPareto (Wei and Hu, ICML 2024): MGDA weights and the rescale."""

import math

import keras
import numpy as np
import pytest
from olm_testing import set_weights_from_numpy
from olm_testing import tiny_model

from keras_olm.balancers import Balancer
from keras_olm.balancers import HeadStopping
from keras_olm.balancers import MMPareto
from keras_olm.balancers import StepRecord
from keras_olm.balancers import mmpareto
from keras_olm.balancers.common import cross_entropy
from keras_olm.balancers.head_stopping import STATE_ROWS


def np_(x):
    return keras.ops.convert_to_numpy(x)


# g_m = (1, 0) and g_u = (-0.5, 1) conflict (cosine -0.5 / 1.118 < 0).
# The min-norm point of their segment: γ = <g_u - g_m, g_u> / ||g_m -
# g_u||² = 1.75 / 3.25 = 7/13; d = γ g_m + (1 - γ) g_u = (4/13, 6/13), with
# <d, g_m> = <d, g_u> = 4/13 (the MGDA optimality condition).
G_M = np.array([1.0, 0.0], "float32")
G_U = np.array([-0.5, 1.0], "float32")


def test_conflicting_gradients_get_the_min_norm_weights():
    a_m, a_u, cos = mmpareto.pareto_weights(G_M, G_U)
    assert float(np_(a_m)) == pytest.approx(7 / 13, rel=1e-6)
    assert float(np_(a_u)) == pytest.approx(6 / 13, rel=1e-6)
    assert float(np_(cos)) == pytest.approx(-0.5 / math.sqrt(1.25), 1e-6)
    d = float(np_(a_m)) * G_M + float(np_(a_u)) * G_U
    assert d @ G_M == pytest.approx(d @ G_U, abs=1e-6)


def test_agreeing_gradients_get_equal_weights():
    a_m, a_u, cos = mmpareto.pareto_weights(G_M, np.array([1.0, 1.0]))
    assert (float(np_(a_m)), float(np_(a_u))) == (0.5, 0.5)
    assert float(np_(cos)) == pytest.approx(1 / math.sqrt(2), rel=1e-6)


def test_final_gradient_magnitude_by_hand():
    # d = 2 (7/13 g_m + 6/13 g_u) = (8/13, 12/13), ||d|| = 1.1094004;
    # ||g_m + g_u|| = ||(0.5, 1)|| = 1.1180340 > ||d||: rescaled to it,
    # then times 1.5.
    out = mmpareto.pareto_gradient(G_M, G_U, 7 / 13, 6 / 13, 1.5)
    np.testing.assert_allclose(np_(out), [0.9302605, 1.3953908], rtol=1e-5)
    # Agreeing gradients with equal weights: d = g_m + g_u, no rescale.
    g_u = np.array([1.0, 1.0], "float32")
    out = mmpareto.pareto_gradient(G_M, g_u, 0.5, 0.5, 1.0)
    np.testing.assert_allclose(np_(out), G_M + g_u, rtol=1e-6)


def test_transform_gradients_on_one_encoder():
    balancer = MMPareto(scale=1.0)
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    variables = model.trainable_variables
    groups = model._gradient_groups_by_modality()
    rng = np.random.default_rng(0)
    total = [rng.normal(size=v.shape).astype("float32") for v in variables]
    fused = [rng.normal(size=v.shape).astype("float32") for v in variables]
    step = StepRecord(
        y=None,
        logits={},
        finite=keras.ops.convert_to_tensor(True),
        head_gradients={"fused": fused},
    )
    out = balancer.apply_transform_gradients(total, variables, groups, step)
    for i, m in enumerate(("fast", "slow")):
        g_m = np.concatenate([fused[j].ravel() for j in groups[m]])
        g_u = np.concatenate(
            [total[j].ravel() - fused[j].ravel() for j in groups[m]]
        )
        cos = g_m @ g_u / np.linalg.norm(g_m) / np.linalg.norm(g_u)
        gamma = (g_u @ g_u - g_m @ g_u) / np.sum((g_m - g_u) ** 2)
        a_m = 0.5 if cos > 0 else min(max(gamma, 0.0), 1.0)
        assert float(np_(balancer.cosines)[i]) == pytest.approx(cos, 1e-4)
        assert float(np_(balancer.multimodal_weights)[i]) == pytest.approx(
            a_m, 1e-4
        )
        for j in groups[m]:
            d = 2 * (a_m * fused[j] + (1 - a_m) * (total[j] - fused[j]))
            ratio = np.linalg.norm(total[j]) / np.linalg.norm(d)
            np.testing.assert_allclose(
                np_(out[j]), d * max(ratio, 1.0), rtol=1e-4, atol=1e-6
            )
    grouped = {j for g in groups.values() for j in g}
    for j in set(range(len(variables))) - grouped:
        np.testing.assert_array_equal(np_(out[j]), total[j])
    assert int(np_(balancer.steps)) == 1


def test_a_zero_unimodal_gradient_is_no_conflict():
    # The min-norm point of g_m and a zero g_u is the zero vector; without
    # a conflict the encoder keeps g_m.
    a_m, a_u, cos = mmpareto.pareto_weights(G_M, np.zeros(2, "float32"))
    assert (float(np_(a_m)), float(np_(a_u))) == (0.5, 0.5)
    out = mmpareto.pareto_gradient(G_M, np.zeros(2), 0.5, 0.5, 1.5)
    np.testing.assert_allclose(np_(out), 1.5 * G_M, rtol=1e-6)


def test_a_stopped_head_leaves_its_encoder_the_multimodal_gradient():
    # Both heads stopped: every encoder trains on s · g_m (it used to get
    # a zero gradient, and with weight decay the encoders decayed to 0).
    balancer = MMPareto(scale=1.5, head_stopping=HeadStopping())
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    stopping = balancer.head_stopping
    state = np_(stopping.state).copy()
    state[STATE_ROWS.index("stopped")] = [1.0, 0.0, 0.0]
    stopping.state.assign(state)
    variables = model.trainable_variables
    groups = model._gradient_groups_by_modality()
    rng = np.random.default_rng(0)
    fused = [rng.normal(size=v.shape).astype("float32") for v in variables]
    # The stopped head's share of the total is round-off.
    total = [
        (f + 1e-7 * rng.normal(size=f.shape)).astype("float32") for f in fused
    ]
    for j in groups["slow"]:
        total[j] += rng.normal(size=total[j].shape).astype("float32")
    step = StepRecord(
        y=None,
        logits={},
        finite=keras.ops.convert_to_tensor(True),
        head_gradients={"fused": fused},
    )
    out = balancer.apply_transform_gradients(total, variables, groups, step)
    for j in groups["fast"]:
        np.testing.assert_allclose(np_(out[j]), 1.5 * fused[j], rtol=1e-6)
    assert float(np_(balancer.multimodal_weights)[0]) == 0.5
    # The open head's encoder is combined as before.
    slow = [j for j in groups["slow"]]
    assert not np.allclose(np_(out[slow[0]]), 1.5 * fused[slow[0]])


class FusedGradientOnly(Balancer):
    """Trains with the step's separate fused-loss gradients alone."""

    head_gradients = ("fused",)
    transforms_gradients = True

    def transform_gradients(self, grads, variables, groups, step):
        fused = step.head_gradients["fused"]
        return [
            keras.ops.zeros_like(g) if f is None else f
            for g, f in zip(grads, fused)
        ], []


class FusedLossOnly(Balancer):
    """The fused head's cross-entropy as the whole loss."""

    def compute_loss(self, y, logits, sample_weight=None, features=None):
        total, head_losses = super().compute_loss(y, logits, sample_weight)
        return cross_entropy(y, logits["fused"], sample_weight), head_losses


# The reference model's unimodal heads get no gradient (Keras warns).
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_head_gradients_hook_is_the_gradient_of_that_head_alone():
    """One SGD step on `head_gradients['fused']` is one SGD step on the
    fused loss alone, on every backend."""
    x = {
        "fast": np.random.default_rng(0).normal(size=(8, 16)),
        "slow": np.random.default_rng(1).normal(size=(8, 64)),
    }
    y = np.arange(8) % 2
    models = []
    for balancer in (FusedGradientOnly(), FusedLossOnly()):
        model = tiny_model(balancer, num_classes=2)
        model.build({"fast": (None, 16), "slow": (None, 64)})
        set_weights_from_numpy(model)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.train_on_batch(x, y)
        models.append(model)
    for a, b in zip(*(m.trainable_variables for m in models)):
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-6)
    # The fused loss moves the encoders (it is not zero there).
    fresh = tiny_model(FusedLossOnly(), num_classes=2)
    fresh.build({"fast": (None, 16), "slow": (None, 64)})
    set_weights_from_numpy(fresh)
    kernel = fresh.encoders["fast"].trainable_variables[0]
    moved = models[0].encoders["fast"].trainable_variables[0]
    assert not np.allclose(np_(kernel), np_(moved))


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="scale"):
        MMPareto(scale=0.0)
    balancer = MMPareto()
    balancer.build_heads(["a", "v", "fused"], 2)
    with pytest.raises(ValueError, match="head_gradients"):
        balancer.transform_gradients([], [], {}, StepRecord(y=None, logits={}))
