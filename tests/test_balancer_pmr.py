"""PMR (Fan et al., CVPR 2023): prototypes and the weaker modality's PCE."""

import math

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

from keras_olm.balancers import PMR
from keras_olm.balancers import StepRecord
from keras_olm.balancers import pmr

# Features (0, 0) and (3, 4), prototypes (0, 0) and (3, 0), labels 0, 1:
# distances [[0, 3], [5, 4]]; the true-class probabilities are
# 1 / (1 + e^-3) = 0.9525741 and 1 / (1 + e^-1) = 0.7310586, their sum
# 1.6836327, and the PCE the mean of -log: 0.1809245.
FEATURES = np.array([[0.0, 0.0], [3.0, 4.0]], "float32")
PROTOTYPES = np.array([[0.0, 0.0], [3.0, 0.0]], "float32")
Y = np.array([0, 1], "int32")


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_prototype_logits_and_pce_by_hand():
    logits = np_(pmr.prototype_logits(FEATURES, PROTOTYPES))
    np.testing.assert_allclose(logits, [[0.0, -3.0], [-5.0, -4.0]], atol=1e-5)
    pce = float(np_(pmr.prototype_cross_entropy(Y, FEATURES, PROTOTYPES)))
    assert pce == pytest.approx(0.1809245, rel=1e-5)


def test_pce_goes_to_the_weaker_modality_only():
    betas, ratios = pmr.pce_coefficients([1.6836327, 1.0], alpha=0.5)
    np.testing.assert_allclose(np_(ratios), [1.6836327, 1 / 1.6836327], 1e-5)
    np.testing.assert_allclose(np_(betas), [0.0, 0.5])
    # Equal scores: no modality is weaker, no PCE (as the official code).
    betas, _ = pmr.pce_coefficients([1.0, 1.0], alpha=0.5)
    np.testing.assert_allclose(np_(betas), [0.0, 0.0])


def test_prototype_update_by_hand():
    # Class 0 was seen: 0.5 * (0, 0) + 0.5 * (2, 2) = (1, 1). Class 1 is
    # new: it takes its batch mean ((4, 4) + (6, 0)) / 2 = (5, 2).
    protos, seen = pmr.update_prototypes(
        PROTOTYPES,
        np.array([1.0, 0.0], "float32"),
        np.array([[2.0, 2.0], [4.0, 4.0], [6.0, 0.0]], "float32"),
        np.array([0, 1, 1]),
        0.5,
    )
    np.testing.assert_allclose(np_(protos), [[1.0, 1.0], [5.0, 2.0]])
    np.testing.assert_allclose(np_(seen), [1.0, 1.0])
    # A class absent from the batch keeps its prototype.
    protos, _ = pmr.update_prototypes(
        PROTOTYPES, np.ones(2, "float32"), FEATURES[:1], Y[:1], 0.5
    )
    np.testing.assert_allclose(np_(protos), PROTOTYPES)


def built_model(alpha=0.5):
    balancer = PMR(alpha=alpha)
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    return model, balancer


def padded(x):
    # The tiny encoders have 16 units: the hand example in 2 of them.
    return np.pad(x, ((0, 0), (0, 14)))


def test_loss_adds_alpha_times_the_weaker_modality_pce():
    model, balancer = built_model(alpha=0.5)
    model.heads["fast"].prototypes.assign(padded(PROTOTYPES))
    model.heads["slow"].prototypes.assign(padded(PROTOTYPES))
    # fast is the hand example (score 1.6836); slow's features (1.5, ±10)
    # are equidistant from (0, 0) and (3, 0), so its probabilities are 1/2
    # (score 1.0, PCE ln 2): slow is the weaker modality and gets
    # 0.5 * PCE = 0.5 * ln 2 on top of the heads' cross-entropies.
    features = {
        "fast": keras.ops.convert_to_tensor(padded(FEATURES)),
        "slow": keras.ops.convert_to_tensor(
            padded(np.array([[1.5, 10.0], [1.5, -10.0]], "float32"))
        ),
        "fused": keras.ops.zeros((2, 32)),
    }
    logits = {h: keras.ops.zeros((2, 2)) for h in model.head_names}
    total, head_losses = balancer.compute_loss(Y, logits, None, features)
    ce = 3 * math.log(2.0)  # every head's logits are 0: CE = ln 2 each
    assert float(np_(total)) == pytest.approx(
        ce + 0.5 * math.log(2.0), rel=1e-5
    )
    np.testing.assert_allclose(np_(head_losses), [math.log(2.0)] * 3, 1e-6)


def test_update_moves_the_prototypes_and_logs_the_ratio():
    model, balancer = built_model()
    features = {
        "fast": padded(FEATURES),
        "slow": padded(2 * FEATURES),
        "fused": np.zeros((2, 32), "float32"),
    }
    features = {k: keras.ops.convert_to_tensor(v) for k, v in features.items()}

    def record(finite):
        return StepRecord(
            y=Y,
            logits={},
            finite=keras.ops.convert_to_tensor(finite),
            features=features,
        )

    balancer.apply_update(record(True))
    # Zero prototypes at first: every distance ties, ratios 1, no PCE.
    np.testing.assert_allclose(np_(balancer.ratios), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np_(balancer.betas), [0.0, 0.0])
    # First sight of both classes: the prototypes are the batch means.
    np.testing.assert_allclose(
        np_(model.heads["slow"].prototypes), padded(2 * FEATURES)
    )
    assert int(np_(balancer.steps)) == 1
    balancer.apply_update(record(False))
    assert int(np_(balancer.steps)) == 1


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="momentum"):
        PMR(momentum=1.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        PMR(modulation_starts=2)
    with pytest.raises(ValueError, match="at least 2"):
        PMR().build_heads(["audio", "fused"], 3)
