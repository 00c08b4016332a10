"""The late fusions of Table 1: FiLM, gated and attention (and their API)."""

import math
import os

import keras
import numpy as np
import pytest
from olm_testing import tiny_encoder

import keras_olm
from keras_olm.synthetic import make_imbalanced


def np_(x):
    return keras.ops.convert_to_numpy(x)


def _set_dense(dense, kernel, bias):
    dense.kernel.assign(np.asarray(kernel, "float32"))
    dense.bias.assign(np.asarray(bias, "float32"))


def _row(values):
    return np.asarray([values], "float32")


# --- AttentionFusion ------------------------------------------------------


def test_attention_fusion_hand_computed():
    # Equal widths, units=None: no projection. One hidden unit that reads
    # the first feature: e_m = tanh(x_m[0]), alpha = softmax(e).
    fusion = keras_olm.AttentionFusion(attention_units=1)
    a = _row([math.atanh(0.5), 4.0])
    b = _row([0.0, 2.0])
    fusion.build({"a": (None, 2), "b": (None, 2)})
    assert fusion.projections == {}
    fusion.score_kernel.assign(np.array([[1.0], [0.0]], "float32"))
    fusion.score_bias.assign(np.zeros((1,), "float32"))
    fusion.score_vector.assign(np.ones((1,), "float32"))
    out = fusion({"a": a, "b": b})
    alpha_a = math.exp(0.5) / (math.exp(0.5) + 1.0)  # 0.62246
    expected = alpha_a * a + (1.0 - alpha_a) * b  # [0.341921, 3.244919]
    np.testing.assert_allclose(np_(out["fused"]), expected, rtol=1e-5)
    np.testing.assert_allclose(
        np_(out["fused"]), [[0.341921, 3.244919]], rtol=1e-5
    )
    np.testing.assert_allclose(np_(out["a"]), a)
    np.testing.assert_allclose(np_(out["b"]), b)
    weights = np_(fusion.attention_weights({"a": a, "b": b}))
    np.testing.assert_allclose(weights, [[alpha_a, 1 - alpha_a]], rtol=1e-5)


def test_attention_fusion_projects_and_pools():
    # Different widths are projected to the largest; a feature map is
    # averaged over its spatial axes and a sequence encoder's dict gives
    # its "pooled" entry.
    fusion = keras_olm.AttentionFusion()
    features = {
        "img": np.ones((3, 2, 2, 4), "float32"),
        "txt": {
            "sequence": np.zeros((3, 7, 6), "float32"),
            "pooled": np.ones((3, 6), "float32"),
        },
    }
    out = fusion(features)
    assert tuple(out["fused"].shape) == (3, 6)
    assert tuple(out["img"].shape) == (3, 4)
    assert tuple(out["txt"].shape) == (3, 6)
    assert sorted(fusion.projections) == ["img", "txt"]
    shapes = fusion.compute_output_shape(
        {"img": (None, 2, 2, 4), "txt": {"pooled": (None, 6)}}
    )
    assert shapes["fused"] == (None, 6)
    weights = np_(fusion.attention_weights(features))
    np.testing.assert_allclose(weights.sum(axis=1), np.ones(3), rtol=1e-6)

    # With units, the projected width is units; the weights are a convex
    # combination of the projected features.
    fusion = keras_olm.AttentionFusion(units=5, attention_units=3)
    out = fusion({"a": np.ones((2, 4)), "b": np.ones((2, 4))})
    assert tuple(out["fused"].shape) == (2, 5)
    assert tuple(fusion.score_kernel.shape) == (5, 3)


# --- FiLMFusion -----------------------------------------------------------


def test_film_fusion_hand_computed():
    # a = [1, 2] conditions b = [3, 4, 5]:
    # W a + bias = [1, 2, 0, 2, 0, 1] + [0, 0, 1, 0, 0, 0]
    # gamma = [1, 2, 1], beta = [2, 0, 1] -> [1*3+2, 2*4+0, 1*5+1].
    fusion = keras_olm.FiLMFusion(conditioning="a")
    fusion.build({"a": (None, 2), "b": (None, 3)})
    assert sorted(fusion.film_generators) == ["b"]
    _set_dense(
        fusion.film_generators["b"],
        [[1, 0, 0, 0, 0, 1], [0, 1, 0, 1, 0, 0]],
        [0, 0, 1, 0, 0, 0],
    )
    out = fusion({"a": _row([1, 2]), "b": _row([3, 4, 5])})
    np.testing.assert_allclose(np_(out["fused"]), [[5.0, 8.0, 6.0]])
    np.testing.assert_allclose(np_(out["a"]), [[1.0, 2.0]])


def test_film_fusion_three_modalities_concatenates_the_modulated():
    # The first modality conditions the two others, each by its own
    # generator; the fused feature is [b~, c~].
    fusion = keras_olm.FiLMFusion()
    fusion.build({"a": (None, 1), "b": (None, 1), "c": (None, 2)})
    _set_dense(fusion.film_generators["b"], [[2, 1]], [0, 0])
    _set_dense(fusion.film_generators["c"], [[1, 1, 0, 0]], [0, 0, 1, -1])
    # a = 3: gamma_b = 6, beta_b = 3; gamma_c = [3, 3], beta_c = [1, -1].
    out = fusion({"a": _row([3]), "b": _row([2]), "c": _row([1, -1])})
    np.testing.assert_allclose(np_(out["fused"]), [[15.0, 4.0, -4.0]])
    shapes = fusion.compute_output_shape(
        {"a": (None, 1), "b": (None, 1), "c": (None, 2)}
    )
    assert shapes["fused"] == (None, 3)


# --- GatedFusion ----------------------------------------------------------


def test_gated_fusion_hand_computed():
    # h_a = a, h_b = 2 b + [1, 0]; fused = sigmoid(h_a) * h_b.
    fusion = keras_olm.GatedFusion(units=2, gate="a")
    fusion.build({"a": (None, 2), "b": (None, 2)})
    _set_dense(fusion.projections["a"], np.eye(2), [0, 0])
    _set_dense(fusion.projections["b"], 2 * np.eye(2), [1, 0])
    a = _row([0.0, math.log(3.0)])  # sigmoid: [0.5, 0.75]
    out = fusion({"a": a, "b": _row([1, 2])})  # h_b = [3, 4]
    np.testing.assert_allclose(np_(out["fused"]), [[1.5, 3.0]], rtol=1e-6)


def test_gated_fusion_three_modalities_gates_the_sum():
    fusion = keras_olm.GatedFusion(gate="c")  # units: largest width, 2
    fusion.build({"a": (None, 1), "b": (None, 2), "c": (None, 2)})
    _set_dense(fusion.projections["a"], [[1, 1]], [0, 0])
    _set_dense(fusion.projections["b"], np.eye(2), [0, 0])
    _set_dense(fusion.projections["c"], np.eye(2), [0, 0])
    out = fusion(
        {
            "a": _row([1]),
            "b": _row([2, 3]),
            "c": _row([0.0, -math.log(3.0)]),  # sigmoid: [0.5, 0.25]
        }
    )
    # (h_a + h_b) = [3, 4]; times the gate [0.5, 0.25].
    np.testing.assert_allclose(np_(out["fused"]), [[1.5, 1.0]], rtol=1e-6)


# --- bad inputs -----------------------------------------------------------


FUSIONS = {
    "film": lambda: keras_olm.FiLMFusion(),
    "gated": lambda: keras_olm.GatedFusion(units=4),
    "attention": lambda: keras_olm.AttentionFusion(units=4),
}


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_bad_inputs_name_the_culprit(kind):
    with pytest.raises(ValueError, match=r"at least 2 modalities.*'a'"):
        FUSIONS[kind]()({"a": np.ones((2, 3))})
    with pytest.raises(ValueError, match="dict"):
        FUSIONS[kind]()(np.ones((2, 3)))
    fusion = FUSIONS[kind]()
    fusion({"a": np.ones((2, 3)), "b": np.ones((2, 3))})
    with pytest.raises(ValueError, match=r"missing \['b'\].*unexpected"):
        fusion({"a": np.ones((2, 3)), "c": np.ones((2, 3))})
    with pytest.raises(ValueError, match="pooled"):
        FUSIONS[kind]()({"a": np.ones((2, 3)), "b": {"seq": np.ones((2, 3))}})


def test_conditioning_and_gate_must_be_modalities():
    feats = {"audio": np.ones((2, 3)), "visual": np.ones((2, 3))}
    with pytest.raises(ValueError, match="conditioning='text'"):
        keras_olm.FiLMFusion(conditioning="text")(feats)
    with pytest.raises(ValueError, match="gate='depth'"):
        keras_olm.GatedFusion(gate="depth")(feats)


# --- the Fusion contract --------------------------------------------------


def test_every_fusion_layer_is_a_fusion():
    layers = keras_olm.layers
    assert layers.FUSED == "fused"
    for cls in (
        layers.LateFusion,
        layers.FiLMFusion,
        layers.GatedFusion,
        layers.AttentionFusion,
        layers.IRFB,
        layers.MBT,
    ):
        assert issubclass(cls, layers.Fusion), cls


def test_a_fusion_subclass_works_in_the_model():
    class MeanFusion(keras_olm.layers.Fusion):
        def call(self, features):
            self.check_modalities(features)
            fused = keras.ops.mean(keras.ops.stack(list(features.values())), 0)
            return {**features, keras_olm.layers.FUSED: fused}

    model = _model(MeanFusion(), balancer="heads")
    x, _ = make_imbalanced(4, num_classes=3, seed=0)
    logits = model.head_logits(x)
    assert sorted(logits) == ["fast", "fused", "slow"]
    with pytest.raises(ValueError, match="MeanFusion fuses at least 2"):
        MeanFusion()({"a": np.ones((2, 3))})


# --- in the model: save, load, train --------------------------------------


def _model(fusion, balancer="olm"):
    return keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(8), "slow": tiny_encoder(8)},
        num_classes=3,
        fusion=fusion,
        balancer=balancer,
    )


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_keras_round_trip(kind, tmp_path):
    x, _ = make_imbalanced(16, num_classes=3, seed=0)
    model = _model(FUSIONS[kind]())
    model.build({"fast": (None, 16), "slow": (None, 64)})
    before = model.predict_heads(x)
    path = os.path.join(tmp_path, f"{kind}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.fusion) is type(model.fusion)
    assert restored.fusion.get_config() == model.fusion.get_config()
    after = restored.predict_heads(x)
    for head in ("fast", "slow", "fused"):
        np.testing.assert_allclose(after[head], before[head], atol=1e-6)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_layer_config_round_trip(kind):
    layer = FUSIONS[kind]()
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_short_fit_with_olm_learns(kind):
    x, y = make_imbalanced(480, num_classes=3, seed=0)
    keras.utils.set_random_seed(0)
    model = _model(FUSIONS[kind]())
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(x, y, epochs=4, batch_size=48, verbose=0)
    losses = history.history["fused_loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    assert history.history["fused_acc"][-1] > 0.6  # chance: 1/3
    coefs = [history.history[f"{h}_coef"][-1] for h in ("fast", "fused")]
    assert all(np.isfinite(coefs))
