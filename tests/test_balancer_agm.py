"""AGM (Li et al., ICCV 2023): Shapley mono scores and coefficients."""

import math

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

from keras_olm.balancers import AGM
from keras_olm.balancers import StepRecord
from keras_olm.balancers import agm


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_coalitions_are_the_proper_non_empty_subsets():
    assert agm.coalitions(["a", "v"]) == [("a",), ("v",)]
    assert agm.coalitions(["a", "v", "t"]) == [
        ("a",),
        ("v",),
        ("t",),
        ("a", "v"),
        ("a", "t"),
        ("v", "t"),
    ]


def test_two_modality_shapley_responses_by_hand():
    # v(a, v) = 10, v(a) = 4, v(v) = 3, v(∅) = 0:
    # φ_a = ½ (10 - 3) + ½ (4 - 0) = 5.5, φ_v = ½ (10 - 4) + ½ 3 = 4.5.
    values = {("a", "v"): 10.0, ("a",): 4.0, ("v",): 3.0}
    phi = agm.shapley_responses(values, ["a", "v"])
    assert phi == {"a": 5.5, "v": 4.5}
    # A given v(∅) enters as in the Shapley value: φ_a = 5.5 - ½ · 2.
    phi = agm.shapley_responses({**values, (): 2.0}, ["a", "v"])
    assert phi == {"a": 4.5, "v": 3.5}


def test_three_modality_shapley_responses_by_hand():
    # An additive game (v(S) = Σ_{m∈S} w_m) gives φ_m = w_m.
    w = {"a": 1.0, "v": 2.0, "t": 4.0}
    mods = list(w)
    values = {
        tuple(m for m in mods if m in subset): sum(w[m] for m in subset)
        for subset in [*agm.coalitions(mods), tuple(mods)]
    }
    phi = agm.shapley_responses(values, mods)
    for m in mods:
        assert phi[m] == pytest.approx(w[m])
    # A synergy of 6 in every coalition holding both a and v is split
    # equally between them (symmetry): 3 each, nothing to t.
    values[("a", "v")] += 6.0
    values[("a", "v", "t")] += 6.0
    phi = agm.shapley_responses(values, mods)
    assert phi["a"] == pytest.approx(4.0)
    assert phi["v"] == pytest.approx(5.0)
    assert phi["t"] == pytest.approx(4.0)


def test_mono_scores_by_hand():
    y = np.array([0, 0], "int32")
    # Equal logits: -log ½ each. A probability under 1e-8 counts as 1e-8.
    scores = agm.mono_scores(
        y,
        [
            np.zeros((2, 2), "float32"),
            np.array([[-100.0, 100.0], [-100.0, 100.0]], "float32"),
        ],
    )
    np.testing.assert_allclose(
        np_(scores), [math.log(2.0), 18.420681], rtol=1e-5
    )


def test_coefficients_by_hand():
    # s = (1, 2), ŝ = (1.5, 1.5): r = exp(2 (1.5 - s)) = (e, 1/e), η = 1,
    # k = exp(η - r) = (exp(1 - e), exp(1 - 1/e)): the leading modality
    # (lower loss) is slowed, the lagging one sped up.
    k, r, eta = agm.agm_coefficients([1.0, 2.0], [1.5, 1.5], alpha=1.0)
    np.testing.assert_allclose(np_(r), [math.e, 1 / math.e], rtol=1e-6)
    np.testing.assert_allclose(np_(eta), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np_(k), [0.1793741, 1.8815964], rtol=1e-5)
    # η - r is capped at 7: exp(0.5 · 7).
    k, _, _ = agm.agm_coefficients([1.0, 1.0], [-5.0, 5.0], alpha=0.5)
    assert float(np_(k)[0]) == pytest.approx(math.exp(3.5), rel=1e-5)


def test_transform_gradients_scales_each_encoder_by_its_coefficient():
    balancer = AGM(alpha=1.0)
    model = tiny_model(balancer, num_classes=2)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    variables = model.trainable_variables
    grads = [keras.ops.ones(v.shape) for v in variables]
    y = np.array([0, 1], "int32")
    inputs = {"fast": np.ones((2, 16), "float32"), "slow": np.ones((2, 64))}
    # The fused logits by coalition: v(fast, slow) = step logits,
    # v(fast) and v(slow) from the `forward` hook (zeroed inputs).
    full = np.array([[2.0, 0.0], [0.0, 2.0]], "float32")
    only = {
        "fast": np.array([[2.0, 0.0], [0.0, 2.0]], "float32"),
        "slow": np.zeros((2, 2), "float32"),
    }
    calls = []

    def forward(x):
        given = [m for m in ("fast", "slow") if np.any(np_(x[m]))]
        calls.append(given)
        assert len(given) == 1
        return {"fused": keras.ops.convert_to_tensor(only[given[0]])}

    step = StepRecord(
        y=y,
        logits={"fused": full},
        finite=keras.ops.convert_to_tensor(True),
        inputs=inputs,
        forward=forward,
    )
    groups = model._gradient_groups_by_modality()
    out = balancer.apply_transform_gradients(grads, variables, groups, step)
    assert sorted(calls) == [["fast"], ["slow"]]
    # φ_fast = ½ (full - v(slow)) + ½ v(fast) = [[2, 0], [0, 2]];
    # φ_slow = ½ (full - v(fast)) + ½ v(slow) = 0.
    s_fast = -math.log(math.exp(2) / (math.exp(2) + 1))
    s_slow = math.log(2.0)
    np.testing.assert_allclose(np_(balancer.scores), [s_fast, s_slow], 1e-5)
    # First step: ŝ was 0 (η = 1); r = exp(±(s_slow - s_fast)).
    gap = s_slow - s_fast
    k = [math.exp(1 - math.exp(gap)), math.exp(1 - math.exp(-gap))]
    np.testing.assert_allclose(np_(balancer.coefficients), k, rtol=1e-5)
    np.testing.assert_allclose(
        np_(balancer.running_scores), [s_fast, s_slow], 1e-5
    )
    assert int(np_(balancer.steps)) == 1
    for i, m in enumerate(("fast", "slow")):
        for j in groups[m]:
            np.testing.assert_allclose(np_(out[j]), k[i], rtol=1e-5)
    grouped = {j for g in groups.values() for j in g}
    for j in set(range(len(variables))) - grouped:
        np.testing.assert_array_equal(np_(out[j]), 1.0)


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="alpha"):
        AGM(alpha=-1.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        AGM(modulation_starts=1)
    with pytest.raises(ValueError, match="at least 2"):
        AGM().build_heads(["audio", "fused"], 3)
    balancer = AGM()
    balancer.build_heads(["a", "v", "fused"], 2)
    with pytest.raises(ValueError, match="forward"):
        balancer.responses(StepRecord(y=None, logits={}))
