"""MMCosine (Xu et al., ICASSP 2023): scaled cosine heads."""

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

from keras_olm.balancers import MMCosine
from keras_olm.balancers import mmcosine


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_cosine_logits_by_hand():
    features = np.array([[3.0, 4.0], [0.0, -2.0]], "float32")
    kernel = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    # x / |x| = (0.6, 0.8) and (0, -1); the kernel's columns normalise to
    # (1, 0) and (0, 1); s = 10 scales the cosines.
    logits = np_(mmcosine.cosine_logits(features, kernel, 10.0))
    np.testing.assert_allclose(logits, [[6.0, 8.0], [0.0, -10.0]], atol=1e-5)


def test_logits_ignore_the_feature_norm():
    head = mmcosine.CosineHead(3, scale=5.0)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    small, large = np_(head(x)), np_(head(100.0 * x))
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-5)
    assert np.abs(large).max() <= 5.0 + 1e-5


def test_every_head_of_the_model_is_a_cosine_head():
    model = tiny_model(MMCosine(scale=4.0))
    model.build({"fast": (None, 16), "slow": (None, 64)})
    for head in model.heads.values():
        assert isinstance(head, mmcosine.CosineHead)
        assert head.scale == 4.0
    x = {
        "fast": np.full((2, 16), 50.0, "float32"),
        "slow": np.full((2, 64), 50.0, "float32"),
    }
    for logits in model.predict_heads(x).values():
        assert np.abs(logits).max() <= 4.0 + 1e-4


def test_bad_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="scale"):
        MMCosine(scale=0.0)
