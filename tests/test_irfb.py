"""SequenceEncoder, IRFB and MBT: masks, decoupling, gradients, training."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_olm
from keras_olm.layers import FUSED
from keras_olm.layers import IRFB
from keras_olm.layers import MBT
from keras_olm.layers import AuthorsIRFBBlock
from keras_olm.layers import IRFBBlock
from keras_olm.layers import SequenceEncoder
from keras_olm.layers.irfb import attention_pool_update


def np_(x):
    return ops.convert_to_numpy(x)


def ragged(lengths, max_len, features, seed=0):
    """Zero-padded random sequences with the given valid lengths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), max_len, features)).astype("float32")
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x


def encoder(layers=1, width=8, **kwargs):
    return SequenceEncoder(
        hidden_dim=width,
        num_layers=layers,
        num_heads=2,
        intermediate_dim=16,
        max_length=8,
        **kwargs,
    )


# --- SequenceEncoder --------------------------------------------------------


def test_encoder_shapes_and_mask_for_ragged_lengths():
    x = ragged([5, 2, 4], 5, 3)
    out = encoder(layers=2)(x)
    assert out["pooled"].shape == (3, 8)
    assert out["hidden_states"].shape == (3, 3, 6, 8)
    expected = np.array(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(np_(out["mask"]), expected)
    # The final [CLS] is what "pooled" holds (post-LN: no final norm).
    np.testing.assert_allclose(
        np_(out["pooled"]), np_(out["hidden_states"])[:, -1, 0], atol=1e-6
    )
    embeddings_only = encoder(layers=0)(x)
    assert embeddings_only["hidden_states"].shape == (3, 1, 6, 8)


def test_cls_and_mask_are_aligned():
    """Padding never changes the output; the last real timestep does.

    The authors' code masks the [CLS]-prepended sequence with the
    unshifted mask: the last real timestep is hidden and the first padded
    slot is attended, so both assertions below would fail.
    """
    enc = encoder(layers=2)
    short = ragged([3, 3], 3, 4, seed=1)
    padded = np.concatenate([short, np.zeros((2, 4, 4), "float32")], 1)
    a, b = enc(short), enc(padded)
    np.testing.assert_allclose(np_(a["pooled"]), np_(b["pooled"]), atol=1e-5)
    np.testing.assert_allclose(
        np_(a["hidden_states"]), np_(b["hidden_states"])[:, :, :4], atol=1e-5
    )
    changed = padded.copy()
    changed[:, 2] += 1.0  # the last real timestep
    delta = np.abs(np_(enc(changed)["pooled"]) - np_(b["pooled"])).max()
    assert delta > 1e-3


def test_encoder_bad_inputs_name_the_problem():
    enc = encoder()
    with pytest.raises(ValueError, match="feature sequences"):
        enc(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="max_length=8"):
        enc(np.ones((2, 9, 3), "float32"))
    with pytest.raises(ValueError, match="must divide"):
        SequenceEncoder(10, 1, 4, 16)


# --- IRFB math --------------------------------------------------------------


def test_eq4_attention_pooling_by_hand():
    z_b = np.array([[[1.0, 0.0], [0.0, 1.0]]], "float32")  # (1, T_b=2, 2)
    z_mb = np.array(  # (1, M=2, T_b=2, 2)
        [[[[2.0, 0.0], [0.0, 2.0]], [[4.0, 4.0], [-2.0, 0.0]]]], "float32"
    )
    scores = np.array([[[0.0, np.log(3.0)], [0.0, 0.0]]], "float32")
    # One softmax over the 4 tokens of z_g: weights 1/6, 3/6, 1/6, 1/6.
    pooled = (
        np.array([2.0, 0.0]) / 6
        + np.array([0.0, 6.0]) / 6
        + np.array([4.0, 4.0]) / 6
        + np.array([-2.0, 0.0]) / 6
    )  # = (4/6, 10/6), added to every bottleneck token
    got = attention_pool_update(z_b, z_mb, scores, "sequence")
    np.testing.assert_allclose(np_(got), z_b + pooled, rtol=1e-5)
    # Per token: a softmax over the 2 modalities for each token.
    # Token 0: weights (1/2, 1/2); token 1: (3/4, 1/4).
    token0 = 0.5 * np.array([2.0, 0.0]) + 0.5 * np.array([4.0, 4.0])
    token1 = 0.75 * np.array([0.0, 2.0]) + 0.25 * np.array([-2.0, 0.0])
    got = attention_pool_update(z_b, z_mb, scores, "per_token")
    np.testing.assert_allclose(
        np_(got), z_b + np.stack([token0, token1])[None], rtol=1e-5
    )


# --- fusion behaviour -------------------------------------------------------


def two_modality_inputs(seed=0):
    return {
        "a": ragged([4, 2, 3], 4, 3, seed=seed),
        "b": ragged([5, 5, 1], 5, 6, seed=seed + 1),
    }


def fusion_model(fusion, layers=1, modalities=("a", "b")):
    return keras_olm.BalancedMultimodalModel(
        {m: encoder(layers=layers) for m in modalities},
        num_classes=3,
        fusion=fusion,
        balancer="heads",
    )


@pytest.mark.parametrize(
    "fusion",
    [
        lambda: IRFB(num_bottlenecks=2, num_heads=2),
        lambda: IRFB(num_bottlenecks=2, num_heads=2, pooling="per_token"),
        lambda: IRFB(num_bottlenecks=2, num_heads=2, variant="authors"),
    ],
    ids=["paper", "per_token", "authors"],
)
def test_irfb_decouples_the_unimodal_streams(fusion):
    model = fusion_model(fusion(), layers=2)
    x = two_modality_inputs()
    other = dict(x, b=ragged([5, 3, 2], 5, 6, seed=9))
    before, after = model.head_logits(x), model.head_logits(other)
    np.testing.assert_array_equal(np_(before["a"]), np_(after["a"]))
    assert np.abs(np_(before["b"]) - np_(after["b"])).max() > 1e-4
    assert np.abs(np_(before["fused"]) - np_(after["fused"])).max() > 1e-4


def test_mbt_lets_fusion_flow_back_into_the_streams():
    # Layer 1 of modality a reads the learned bottleneck tokens; what b
    # wrote into them reaches a's stream from layer 2 on.
    model = fusion_model(MBT(2, 2, 16, num_bottlenecks=2), layers=0)
    x = two_modality_inputs()
    other = dict(x, b=ragged([5, 3, 2], 5, 6, seed=9))
    before, after = model.head_logits(x), model.head_logits(other)
    assert np.abs(np_(before["a"]) - np_(after["a"])).max() > 1e-4
    assert np.abs(np_(before["fused"]) - np_(after["fused"])).max() > 1e-4


@pytest.mark.parametrize(
    "fusion, layers",
    [(lambda: IRFB(2, 2), 2), (lambda: MBT(2, 2, 16, 2), 0)],
    ids=["irfb", "mbt"],
)
def test_fusion_ignores_padding(fusion, layers):
    model = fusion_model(fusion(), layers=layers)
    x = two_modality_inputs()
    longer = dict(x, b=np.concatenate([x["b"], np.zeros((3, 3, 6))], 1))
    before, after = model.head_logits(x), model.head_logits(longer)
    for head in ("a", "b", "fused"):
        np.testing.assert_allclose(
            np_(before[head]), np_(after[head]), atol=1e-5
        )


def test_irfb_rejects_mismatched_encoders():
    x = two_modality_inputs()
    fused = IRFB(2, 2)
    deeper = {"a": encoder(layers=1)(x["a"]), "b": encoder(layers=2)(x["b"])}
    with pytest.raises(ValueError, match="modality 'b' has 2"):
        fused(deeper)
    wider = {"a": encoder()(x["a"]), "b": encoder(width=12)(x["b"])}
    with pytest.raises(ValueError, match="modality 'b' has 12"):
        IRFB(2, 2)(wider)
    flat = {"a": encoder()(x["a"]), "b": ops.ones((3, 8))}
    with pytest.raises(ValueError, match="modality 'b' must return a dict"):
        IRFB(2, 2)(flat)
    no_layers = {m: encoder(layers=0)(x[m]) for m in x}
    with pytest.raises(ValueError, match="num_layers >= 1"):
        IRFB(2, 2)(no_layers)


@pytest.mark.parametrize(
    "variant, block_class, gate_width",
    [("paper", IRFBBlock, 4 * 8), ("authors", AuthorsIRFBBlock, 3 * 8)],
)
def test_irfb_stacks_one_block_per_encoder_layer(
    variant, block_class, gate_width
):
    x = dict(two_modality_inputs(), c=ragged([1, 2, 3], 3, 2, seed=5))
    features = {m: encoder(layers=2)(v) for m, v in x.items()}
    fusion = IRFB(2, 2, variant=variant)
    out = fusion(features)
    assert [type(b) for b in fusion.blocks] == [block_class] * 2
    for block in fusion.blocks:
        for sublayers in (block.cross_attention, block.gates):
            assert sorted(sublayers) == ["a", "b", "c"]
        # Eq. 3 reads every [CLS] and the bottleneck token; the authors'
        # gate reads only the [CLS] tokens.
        assert tuple(block.gates["a"].kernel.shape) == (gate_width, 8)
    # The fused feature is the mean of the tokens after the last block,
    # block l reading layer l of every stream.
    z_b = ops.zeros((3, 2, 8)) + fusion.bottlenecks
    masks = {m: f["mask"] for m, f in features.items()}
    for index, block in enumerate(fusion.blocks):
        tokens = {
            m: f["hidden_states"][:, index + 1] for m, f in features.items()
        }
        z_b = block(z_b, tokens, masks)
    np.testing.assert_allclose(
        np_(out[FUSED]), np_(ops.mean(z_b, axis=1)), atol=1e-6
    )


@pytest.mark.parametrize("block_class", [IRFBBlock, AuthorsIRFBBlock])
def test_irfb_block_keras_round_trip(block_class, tmp_path):
    inputs = {
        "bottleneck": keras.Input((3, 8), name="bottleneck"),
        "tokens": {
            m: keras.Input((None, 8), name=f"{m}_tokens") for m in ("a", "b")
        },
        "masks": {
            m: keras.Input((None,), dtype="bool", name=f"{m}_mask")
            for m in ("a", "b")
        },
    }
    block = block_class(2, intermediate_dim=6, name="block")
    outputs = block(inputs["bottleneck"], inputs["tokens"], inputs["masks"])
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = {
        "bottleneck": rng.normal(size=(2, 3, 8)).astype("float32"),
        "tokens": {
            "a": rng.normal(size=(2, 5, 8)).astype("float32"),
            "b": rng.normal(size=(2, 4, 8)).astype("float32"),
        },
        "masks": {
            "a": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool),
            "b": np.ones((2, 4), bool),
        },
    }
    before = np_(model(x))
    assert before.shape == (2, 3, 8)
    path = os.path.join(tmp_path, "block.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    again = restored.get_layer("block")
    assert type(again) is block_class
    assert again.get_config() == block.get_config()
    np.testing.assert_allclose(np_(restored(x)), before, atol=1e-6)


# --- gradients --------------------------------------------------------------


def _gradients(model, x, y, head):
    """Gradient of one head's cross-entropy w.r.t. the trainable weights."""
    model.head_logits(x)  # builds every variable
    variables = model.trainable_variables
    y = ops.convert_to_tensor(y)

    def loss_of(logits):
        return ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                y, logits[head], from_logits=True
            )
        )

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of(model.head_logits(x))
        grads = tape.gradient(loss, [v.value for v in variables])
    elif backend == "jax":
        import jax

        def f(values):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_of(model.head_logits(x))

        grads = jax.jit(jax.grad(f))([v.value for v in variables])
    else:
        for v in variables:
            v.value.grad = None
        loss_of(model.head_logits(x)).backward()
        grads = [v.value.grad for v in variables]
    return {
        id(v): 0.0 if g is None else float(np.abs(np_(g)).sum())
        for v, g in zip(variables, grads)
    }


def _encoder_norms(model, grads):
    return {
        m: sum(grads[id(v)] for v in model.encoders[m].trainable_variables)
        for m in model.modalities
    }


def test_fused_loss_reaches_every_encoder_only_own_head_under_irfb():
    model = fusion_model(IRFB(2, 2), layers=1, modalities=("a", "b", "c"))
    x = dict(two_modality_inputs(), c=ragged([1, 2, 3], 3, 2, seed=5))
    y = np.array([0, 1, 2])
    fused = _encoder_norms(model, _gradients(model, x, y, "fused"))
    assert all(g > 1e-6 for g in fused.values()), fused
    own = _encoder_norms(model, _gradients(model, x, y, "a"))
    assert own["a"] > 1e-6
    assert own["b"] == 0.0 and own["c"] == 0.0, own


def test_unimodal_loss_reaches_the_other_encoders_under_mbt():
    model = fusion_model(MBT(2, 2, 16, 2), layers=0)
    x = two_modality_inputs()
    own = _encoder_norms(model, _gradients(model, x, np.array([0, 1, 2]), "a"))
    assert own["a"] > 1e-6 and own["b"] > 1e-6, own


# --- four modalities, end to end with OLM -----------------------------------


def four_modality_data(n=96, seed=0):
    """A+V+T+H sequences; label k raises feature k of every real 'a' step."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    dims = {"a": 4, "v": 6, "t": 5, "h": 3}
    lengths = {"a": 6, "v": 4, "t": 7, "h": 3}
    x = {}
    for i, m in enumerate(dims):
        lens = rng.integers(1, lengths[m] + 1, n)
        x[m] = ragged(lens, lengths[m], dims[m], seed=seed + i)
    valid = np.any(x["a"] != 0.0, axis=-1, keepdims=True)
    x["a"] += 3.0 * valid * np.eye(dims["a"], dtype="float32")[y][:, None]
    return x, y


@pytest.mark.parametrize(
    "fusion, layers",
    [
        (lambda: IRFB(2, 2), 1),
        pytest.param(lambda: MBT(1, 2, 16, 2), 0, marks=pytest.mark.slow),
    ],
    ids=["irfb", "mbt"],
)
def test_four_modalities_train_with_olm_and_round_trip(
    fusion, layers, tmp_path
):
    x, y = four_modality_data(112)
    held_out = ({m: v[96:] for m, v in x.items()}, y[96:])
    x, y = {m: v[:96] for m, v in x.items()}, y[:96]
    model = keras_olm.BalancedMultimodalModel(
        {m: encoder(layers=layers) for m in x},
        num_classes=3,
        fusion=fusion(),
        # A held-out batch every step and even batches: one traced step.
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("step")
        ),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(
        x, y, epochs=4, batch_size=16, held_out_data=held_out, verbose=0
    )
    assert model.head_names == ["a", "v", "t", "h", "fused"]
    for h in model.head_names:
        assert f"{h}_coef" in history.history
    assert np.isfinite(history.history["loss"]).all()
    # The informative modality and the fused head learn the labels.
    logits = model.predict_heads(x)
    accuracy = {h: float((v.argmax(-1) == y).mean()) for h, v in logits.items()}
    assert accuracy["a"] > 0.9 and accuracy["fused"] > 0.9, accuracy

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    again = restored.predict_heads(x)
    for h in model.head_names:
        np.testing.assert_allclose(logits[h], again[h], atol=1e-5)
    np.testing.assert_allclose(
        np_(model.balancer.coefficients),
        np_(restored.balancer.coefficients),
    )


@pytest.mark.parametrize(
    "fusion, layers",
    [
        (lambda: IRFB(2, 2, variant="authors", intermediate_dim=12), 2),
        (lambda: MBT(2, 2, 16, 3, fused_from="cls"), 0),
    ],
    ids=["irfb_authors", "mbt"],
)
def test_keras_round_trip_without_training(fusion, layers, tmp_path):
    model = fusion_model(fusion(), layers=layers)
    x = two_modality_inputs()
    model.build({m: (None, *v.shape[1:]) for m, v in x.items()})
    logits = model.head_logits(x)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.fusion.get_config() == model.fusion.get_config()
    again = restored.head_logits(x)
    for h in model.head_names:
        np.testing.assert_allclose(np_(logits[h]), np_(again[h]), atol=1e-5)
