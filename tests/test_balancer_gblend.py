"""Gradient-Blending (Wang et al., CVPR 2020): ΔG / ΔO² weights."""

import keras
import numpy as np
import pytest

from keras_olm.balancers import GBlend
from keras_olm.balancers import StepRecord
from keras_olm.balancers import gblend

# Checkpoint N: train 1.0, held-out 1.2 for every head (overfitting 0.2).
TRAIN0, DEV0 = [1.0, 1.0, 1.0], [1.2, 1.2, 1.2]
# Checkpoint N + n: ΔG = (0.2, 0.3, 0.3); overfitting (0.5, 0.1, 0.3), so
# ΔO = (0.3, -0.1, 0.1) and ΔG / ΔO² = (2.2222, 30, 30), sum 62.2222:
# w = (1/28, 27/56, 27/56).
TRAIN1, DEV1 = [0.5, 0.8, 0.6], [1.0, 0.9, 0.9]
EXPECTED = [1 / 28, 27 / 56, 27 / 56]


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_generalization_and_overfitting_by_hand():
    dg, do = gblend.generalization_and_overfitting(TRAIN0, DEV0, TRAIN1, DEV1)
    np.testing.assert_allclose(np_(dg), [0.2, 0.3, 0.3], rtol=1e-5)
    np.testing.assert_allclose(np_(do), [0.3, -0.1, 0.1], rtol=1e-5)


def test_blend_weights_by_hand():
    w = np_(gblend.blend_weights([0.2, 0.3, 0.3], [0.3, -0.1, 0.1]))
    np.testing.assert_allclose(w, EXPECTED, rtol=1e-5)


def test_heads_that_do_not_generalize_get_no_weight():
    w = np_(gblend.blend_weights([-0.1, 0.2], [0.1, 0.2]))
    np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-7)
    w = np_(gblend.blend_weights([-0.1, 0.0], [0.1, 0.2]))
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-6)


def step(train, held_out, finite=True):
    return StepRecord(
        y=np.zeros((2,), "int32"),
        logits={},
        head_losses=keras.ops.convert_to_tensor(np.array(train, "float32")),
        held_out_losses=keras.ops.convert_to_tensor(
            np.array(held_out, "float32")
        ),
        held_out_flag=keras.ops.convert_to_tensor(1.0),
        finite=keras.ops.convert_to_tensor(finite),
    )


def test_weights_favour_the_head_that_overfits_less():
    balancer = GBlend(refresh_every=2, held_out_schedule="step")
    balancer.build_heads(["a", "b", "fused"], 4)
    for _ in range(2):  # window 1: the reference, weights stay uniform
        balancer.apply_update(step(TRAIN0, DEV0))
    np.testing.assert_allclose(np_(balancer.weights_), [1.0, 1.0, 1.0])
    balancer.apply_update(step(TRAIN1, DEV1))
    np.testing.assert_allclose(np_(balancer.weights_), [1.0, 1.0, 1.0])
    balancer.apply_update(step(TRAIN1, DEV1))  # end of window 2: re-estimated
    w = np_(balancer.weights_)
    # Scaled by the number of heads so that uniform weights are all 1.
    np.testing.assert_allclose(w, 3 * np.array(EXPECTED), rtol=1e-5)
    assert w[1] > 10 * w[0]  # "b" overfits less than "a"
    np.testing.assert_allclose(np_(balancer.head_loss_weights()), w, rtol=1e-6)
    # A non-finite step changes nothing.
    before = [np_(v).copy() for v in balancer.non_trainable_weights]
    balancer.apply_update(step([np.nan, 1.0, 1.0], DEV0, finite=False))
    for b, v in zip(before, balancer.non_trainable_weights):
        np.testing.assert_array_equal(np_(v), b)


def test_window_without_held_out_batch_waits():
    balancer = GBlend(refresh_every=1)
    balancer.build_heads(["a", "b", "fused"], 4)
    no_held_out = StepRecord(
        y=np.zeros((2,), "int32"),
        logits={},
        head_losses=keras.ops.convert_to_tensor(np.array(TRAIN0, "float32")),
        held_out_losses=keras.ops.zeros((3,)),
        held_out_flag=keras.ops.convert_to_tensor(0.0),
        finite=keras.ops.convert_to_tensor(True),
    )
    balancer.apply_update(no_held_out)
    assert int(np_(balancer.windows)) == 0
    balancer.apply_update(step(TRAIN0, DEV0))
    assert int(np_(balancer.windows)) == 1
    # The window's means: train over both steps, held-out over the one.
    np.testing.assert_allclose(np_(balancer.reference_train), TRAIN0)
    np.testing.assert_allclose(
        np_(balancer.reference_held_out), DEV0, rtol=1e-6
    )


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="held_out_schedule"):
        GBlend(held_out_schedule="epoch")
    with pytest.raises(ValueError, match="refresh_every"):
        GBlend(refresh_every=0)
