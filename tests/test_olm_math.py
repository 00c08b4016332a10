"""OLM's equations (Eq. 6-9, Algorithm 1) against hand-computed numbers."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_olm.balancers import OLM
from keras_olm.balancers import ClosedForm
from keras_olm.balancers import HeadStopping
from keras_olm.balancers import HeldOutSchedule
from keras_olm.balancers import LogitLossDescent
from keras_olm.balancers import RateEstimate
from keras_olm.balancers import Rebalancing
from keras_olm.balancers import StepRecord
from keras_olm.balancers import olm as olm_lib


def np_(x):
    return ops.convert_to_numpy(x)


def test_rates_code_form():
    # heads: a, b, fused. dev0 - held_out = G; (train0 - train) - G = C.
    g, c = olm_lib.rates(
        theta0_train=np.array([2.0, 2.0, 2.0]),
        theta0_held_out=np.array([2.0, 2.0, 2.0]),
        train=np.array([0.5, 1.5, 1.0]),
        held_out=np.array([1.0, 1.6, 1.2]),
        form="code",
    )
    np.testing.assert_allclose(np_(g), [1.0, 0.4, 0.8], rtol=1e-6)
    np.testing.assert_allclose(np_(c), [0.5, 0.1, 0.2], rtol=1e-5)


def test_rates_paper_form_uses_absolute_values():
    g, c = olm_lib.rates(
        theta0_train=np.array([2.0, 1.0]),
        theta0_held_out=np.array([2.2, 1.0]),
        train=np.array([0.5, 1.5]),
        held_out=np.array([1.0, 1.6]),
        form="paper",
    )
    # G = |dev0 - held_out|; C = ||held_out - train| - |dev0 - train0||.
    np.testing.assert_allclose(np_(g), [1.2, 0.6], rtol=1e-6)
    np.testing.assert_allclose(np_(c), [0.3, 0.1], rtol=1e-5)


def test_rebalancing_factors_raw_softmax():
    g = np.array([1.0, 0.4, 0.8])
    c = np.array([0.5, 0.1, 0.2])
    lam = np_(olm_lib.rebalancing_factors(g, c, temperature=None))
    ratio = np.array([2.0, 4.0, 4.0])
    expected = np.exp(ratio) / np.exp(ratio).sum()
    np.testing.assert_allclose(lam, expected, rtol=1e-5)
    assert lam.sum() == pytest.approx(1.0, abs=1e-6)


def test_rebalancing_factors_with_temperature():
    g = np.array([1.0, 0.4, 0.8])
    c = np.array([0.5, 0.1, 0.2])
    lam = np_(olm_lib.rebalancing_factors(g, c, temperature=0.5))
    share = np.array([2.0, 4.0, 4.0]) / 10.0
    expected = np.exp(share / 0.5) / np.exp(share / 0.5).sum()
    np.testing.assert_allclose(lam, expected, rtol=1e-5)


def test_c_near_zero_makes_raw_factors_one_hot_but_not_tempered_ones():
    # The dominant head's train and held-out losses fall together: C ~ 0.
    g = np.array([1.0, 0.2, 0.5])
    c = np.array([0.0, 0.3, 0.4])
    raw = np_(olm_lib.rebalancing_factors(g, c, temperature=None))
    np.testing.assert_allclose(raw, [1.0, 0.0, 0.0], atol=1e-6)
    tempered = np_(olm_lib.rebalancing_factors(g, c, temperature=1.0))
    # Shares ~ (1, 0, 0): λ = softmax((1, 0, 0)) = (e, 1, 1) / (e + 2).
    e = math.e
    np.testing.assert_allclose(
        tempered, [e / (e + 2), 1 / (e + 2), 1 / (e + 2)], rtol=1e-4
    )
    assert tempered.max() / tempered.min() <= math.e + 1e-4


def test_logit_targets_faithful_and_preserve():
    norms = np.array([6.0, 2.0, 4.0])
    lam = np.array([0.5, 0.25, 0.25])
    faithful = np_(olm_lib.logit_targets(norms, lam, "faithful"))
    np.testing.assert_allclose(faithful, [2.0, 1.0, 1.0], rtol=1e-6)
    preserve = np_(olm_lib.logit_targets(norms, lam, "preserve"))
    np.testing.assert_allclose(preserve, [6.0, 3.0, 3.0], rtol=1e-6)
    assert preserve.sum() == pytest.approx(norms.sum())


def test_logit_loss_and_gradient():
    w = np.array([1.0, 2.0, 0.5])
    n = np.array([6.0, 1.0, 4.0])
    t = np.array([5.0, 3.0, 2.0])
    # |6 - 5| + |2 - 3| + |2 - 2|
    assert float(olm_lib.logit_loss(w, n, t)) == pytest.approx(2.0)
    grad = np_(olm_lib.logit_loss_gradient(w, n, t))
    np.testing.assert_allclose(grad, [6.0, -1.0, 0.0])


def test_cross_entropy_gradient_matches_hand_value():
    s = np.array([[2.0, 0.0, -1.0]], dtype="float32")
    y = np.array([0])
    w = 0.5
    z = w * s[0]
    p = np.exp(z) / np.exp(z).sum()
    expected = float(((p - np.array([1, 0, 0])) * s[0]).sum())
    got = float(olm_lib.cross_entropy_gradient(w, s, y))
    assert got == pytest.approx(expected, rel=1e-5)

    # And a central finite difference of CE(w s) in w.
    def ce(w):
        z = w * s[0]
        return -(z[0] - np.log(np.exp(z).sum()))

    fd = (ce(w + 1e-3) - ce(w - 1e-3)) / 2e-3
    assert got == pytest.approx(fd, rel=1e-3)


def test_mean_logit_norm():
    logits = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert float(olm_lib.mean_logit_norm(logits)) == pytest.approx(3.0)


def make_olm(**kwargs):
    olm = OLM(**kwargs)
    olm.build_heads(["a", "b", "fused"], num_classes=2)
    return olm


def measure(
    olm, logits, head_losses, held_out_losses, held_out_flag=1.0, finite=True
):
    y = np.array([0, 1])
    olm.apply_update(
        StepRecord(
            y=ops.convert_to_tensor(y),
            logits={
                h: ops.convert_to_tensor(np.asarray(v, "float32"))
                for h, v in logits.items()
            },
            head_losses=ops.convert_to_tensor(
                np.asarray(head_losses, "float32")
            ),
            held_out_losses=ops.convert_to_tensor(
                np.asarray(held_out_losses, "float32")
            ),
            held_out_flag=ops.convert_to_tensor(held_out_flag, "float32"),
            finite=ops.convert_to_tensor(finite),
        )
    )


# Per-sample logit norms: a: 5 and 5, b: 1 and 1, fused: 2 and 4.
LOGITS = {
    "a": [[3.0, 4.0], [4.0, 3.0]],
    "b": [[1.0, 0.0], [0.0, 1.0]],
    "fused": [[2.0, 0.0], [0.0, 4.0]],
}


def test_one_sgd_update_by_hand():
    olm = make_olm(
        coefficient_law=LogitLossDescent(
            optimizer="sgd",
            learning_rate=0.1,
            mean_one=False,
            coefficient_range=None,
        ),
        rebalancing=Rebalancing(momentum=0.0),
        rate_estimate=RateEstimate(loss_momentum=0.0),
    )
    # First step: G = C = 0, so λ is uniform (1/3 each).
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.2, 1.1, 1.0])
    # mean norms n = (5, 1, 3); w = 1; preserve: s̄ = 9, t = (3, 3, 3).
    # grad = sign(n - t) * n = (5, -1, 0); w = 1 - 0.1 * grad.
    np.testing.assert_allclose(
        np_(olm.coefficients), [0.5, 1.1, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(np_(olm.lambdas), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(np_(olm.norms), [2.5, 1.1, 3.0], rtol=1e-6)
    np.testing.assert_allclose(
        np_(olm.reference_held_out_losses), [1.2, 1.1, 1.0], rtol=1e-6
    )

    # Second step: losses fall; Eq. 6-8 now give λ.
    measure(olm, LOGITS, [0.4, 0.9, 0.6], [0.6, 1.0, 0.8])
    g = np.array([0.6, 0.1, 0.2])  # dev0 - held_out
    c = np.array([0.6, 0.1, 0.4]) - g  # (train0 - train) - G
    ratio = np.maximum(g, 1e-6) / np.maximum(c, 1e-6)
    share = ratio / ratio.sum()
    lam = np.exp(share) / np.exp(share).sum()
    np.testing.assert_allclose(np_(olm.lambdas), lam, rtol=1e-4)
    w = np.array([0.5, 1.1, 1.0])
    n = np.array([5.0, 1.0, 3.0])
    t = lam * (w * n).sum()
    expected = w - 0.1 * np.sign(w * n - t) * n
    np.testing.assert_allclose(np_(olm.coefficients), expected, rtol=1e-5)
    assert int(np_(olm.steps)) == 2 and int(np_(olm.held_out_steps)) == 2


def test_one_adam_update_moves_by_learning_rate():
    olm = make_olm(
        coefficient_law=LogitLossDescent(
            optimizer="adam",
            learning_rate=0.01,
            mean_one=False,
            coefficient_range=None,
        )
    )
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    # Adam's first step is lr * sign(grad); grad = (5, -1, 0).
    np.testing.assert_allclose(
        np_(olm.coefficients), [0.99, 1.01, 1.0], atol=1e-6
    )


def test_mean_one_and_clipping():
    olm = make_olm(
        coefficient_law=LogitLossDescent(
            optimizer="sgd",
            learning_rate=0.1,
            mean_one=True,
            coefficient_range=(0.6, 10.0),
        )
    )
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    # Unclipped (0.5, 1.1, 1.0) rescaled to mean 1: * 3 / 2.6; then clip.
    expected = np.clip(np.array([0.5, 1.1, 1.0]) * 3 / 2.6, 0.6, 10.0)
    np.testing.assert_allclose(np_(olm.coefficients), expected, rtol=1e-5)


def test_periodic_slot_without_dev_batch_keeps_dev_state():
    olm = make_olm(rate_estimate=RateEstimate(loss_momentum=0.0))
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.2, 1.1, 1.0])
    measure(olm, LOGITS, [0.5, 0.5, 0.5], [9.0, 9.0, 9.0], held_out_flag=0.0)
    np.testing.assert_allclose(np_(olm.held_out_losses), [1.2, 1.1, 1.0])
    assert int(np_(olm.held_out_steps)) == 1
    np.testing.assert_allclose(np_(olm.train_losses), [0.5, 0.5, 0.5])


def test_non_finite_step_leaves_state_unchanged():
    olm = make_olm()
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.2, 1.1, 1.0])
    # OLM's own state and its head stopping's.
    assert len(olm.non_trainable_weights) == 4
    before = {v.path: np_(v).copy() for v in olm.non_trainable_weights}
    measure(olm, LOGITS, [np.nan, 1.0, 1.0], [1.0, 1.0, 1.0], finite=False)
    for v in olm.non_trainable_weights:
        np.testing.assert_array_equal(np_(v), before[v.path], err_msg=v.path)


def test_authors_preset_and_config_round_trip():
    olm = OLM.authors(steps_per_epoch=50)
    config = olm.get_config()
    law = config["coefficient_law"]
    assert law["class_name"] == "LogitLossDescent"
    law = law["config"]
    assert config["held_out"]["config"]["schedule"] == "step"
    assert law["optimizer"] == "adam"
    assert law["learning_rate"] == pytest.approx(1e-3)
    assert law["coefficient_ce_grad"] is True
    assert law["targets"] == "faithful"
    assert config["rebalancing"]["config"]["temperature"] is None
    assert law["coefficient_range"] is None
    assert config["rate_estimate"]["config"]["warmup_steps"] == 50
    assert config["rebalancing"]["config"]["momentum"] == 0.0
    assert config["head_stopping"] is None
    clone = OLM.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(olm)
    )
    assert isinstance(restored, OLM)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: HeldOutSchedule(schedule="epoch"), "held_out_schedule"),
        (lambda: LogitLossDescent(optimizer="rmsprop"), "optimizer"),
        (lambda: LogitLossDescent(targets="sum"), "targets"),
        (lambda: HeldOutSchedule(every=0), "held_out_every"),
        (lambda: RateEstimate(loss_momentum=1.0), "loss_momentum"),
        (lambda: RateEstimate(form="abs"), "rate_form"),
        (lambda: Rebalancing(temperature=0.0), "lambda_temperature"),
        (
            lambda: ClosedForm(coefficient_range=(2.0, 1.0)),
            "coefficient_range",
        ),
        (
            lambda: LogitLossDescent(coefficient_range=(2.0, 1.0)),
            "coefficient_range",
        ),
        (lambda: OLM(coefficient_law=RateEstimate()), "coefficient_law"),
        (lambda: Rebalancing(momentum=1.0), "lambda_momentum"),
        (lambda: OLM(head_stopping=40), "head_stopping"),
        (lambda: HeadStopping(patience=0), "patience"),
        (lambda: HeadStopping(patience=2.5), "patience"),
        (lambda: HeadStopping(min_delta=-0.1), "min_delta"),
        (lambda: HeadStopping(momentum=1.0), "momentum"),
    ],
)
def test_bad_arguments_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_closed_form_coefficients_by_hand():
    lam = np.array([0.5, 0.25, 0.25])
    # H = 3: H·λ = (1.5, 0.75, 0.75).
    np.testing.assert_allclose(
        np_(olm_lib.closed_form_coefficients(lam, 1.0)),
        [1.5, 0.75, 0.75],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np_(olm_lib.closed_form_coefficients(lam, 0.5)),
        [math.sqrt(1.5), math.sqrt(0.75), math.sqrt(0.75)],
        rtol=1e-6,
    )
    # Uniform λ, or strength 0: no modulation.
    np.testing.assert_allclose(
        np_(olm_lib.closed_form_coefficients(np.full(4, 0.25), 2.0)),
        [1.0] * 4,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np_(olm_lib.closed_form_coefficients(lam, 0.0)), [1.0] * 3
    )


def test_closed_form_update_by_hand():
    olm = make_olm(
        coefficient_law=ClosedForm(strength=1.0),
        rate_estimate=RateEstimate(loss_momentum=0.0),
        rebalancing=Rebalancing(momentum=0.0),
    )
    # First step: λ uniform, so w = 1; the logit norms do not enter.
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.2, 1.1, 1.0])
    np.testing.assert_allclose(np_(olm.coefficients), [1.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(np_(olm.norms), [5.0, 1.0, 3.0], rtol=1e-6)
    # Second step: the λ of test_one_sgd_update_by_hand; w = 3 λ.
    measure(olm, LOGITS, [0.4, 0.9, 0.6], [0.6, 1.0, 0.8])
    g = np.array([0.6, 0.1, 0.2])
    c = np.array([0.6, 0.1, 0.4]) - g
    ratio = np.maximum(g, 1e-6) / np.maximum(c, 1e-6)
    share = ratio / ratio.sum()
    lam = np.exp(share) / np.exp(share).sum()
    np.testing.assert_allclose(np_(olm.lambdas), lam, rtol=1e-4)
    np.testing.assert_allclose(np_(olm.coefficients), 3 * lam, rtol=1e-4)
    # Scaling every logit by 10 leaves the coefficients where they are.
    big = {h: 10 * np.asarray(v) for h, v in LOGITS.items()}
    measure(olm, big, [0.4, 0.9, 0.6], [0.6, 1.0, 0.8])
    np.testing.assert_allclose(np_(olm.coefficients), 3 * lam, rtol=1e-4)


def test_lambda_momentum_moves_lambda_on_held_out_steps_only():
    olm = make_olm(
        coefficient_law=ClosedForm(strength=1.0),
        rate_estimate=RateEstimate(loss_momentum=0.0),
        rebalancing=Rebalancing(momentum=0.5),
    )
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.2, 1.1, 1.0])
    measure(olm, LOGITS, [0.4, 0.9, 0.6], [0.6, 1.0, 0.8])
    g = np.array([0.6, 0.1, 0.2])
    c = np.array([0.6, 0.1, 0.4]) - g
    ratio = np.maximum(g, 1e-6) / np.maximum(c, 1e-6)
    share = ratio / ratio.sum()
    raw = np.exp(share) / np.exp(share).sum()
    # One held-out step after the uniform start: half way to the raw λ.
    smoothed = 0.5 * np.full(3, 1 / 3) + 0.5 * raw
    np.testing.assert_allclose(np_(olm.lambdas), smoothed, rtol=1e-4)
    # A step without a held-out batch keeps λ.
    measure(olm, LOGITS, [0.1, 0.1, 0.1], [0.0] * 3, held_out_flag=0.0)
    np.testing.assert_allclose(np_(olm.lambdas), smoothed, rtol=1e-4)
    np.testing.assert_allclose(np_(olm.coefficients), 3 * smoothed, rtol=1e-4)


def test_the_default_modulates_by_descending_eq9():
    # The default coefficient law: one Adam step down L_logit (Eq. 9,
    # Algorithm 1) per step, rescaled to mean 1 and clipped to [0.1, 10].
    olm = make_olm(
        rate_estimate=RateEstimate(loss_momentum=0.0),
        rebalancing=Rebalancing(momentum=0.0),
    )
    law = olm.coefficient_law
    assert isinstance(law, LogitLossDescent)
    assert (law.optimizer, law.learning_rate) == ("adam", 1e-3)
    assert (law.targets, law.mean_one) == ("preserve", True)
    assert law.coefficient_range == (0.1, 10.0)
    assert olm.head_stopping.patience == 40
    assert olm.head_stopping_patience == 2
    # λ uniform on the first step; mean norms (5, 1, 3), targets (3, 3, 3):
    # grad = (5, -1, 0) and Adam's first step is lr * sign(grad); the mean
    # stays 1.
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        np_(olm.coefficients), [0.999, 1.001, 1.0], atol=1e-6
    )
    measure(olm, LOGITS, [0.5, 0.9, 0.8], [0.5, 1.0, 1.0])
    assert np.ptp(np_(olm.lambdas)) > 0.1
    assert np.mean(np_(olm.coefficients)) == pytest.approx(1.0, abs=1e-6)


def test_negative_strength_stays_inside_its_bounds():
    # Negative strength: the head with the smallest λ gets the largest
    # coefficient. With λ temperature 1 and three heads, H·λ lies in
    # [3 / (e + 2), 3e / (e + 2)], so w = (H·λ)^-2 in [0.335, 2.47].
    olm = make_olm(
        rate_estimate=RateEstimate(loss_momentum=0.0),
        rebalancing=Rebalancing(momentum=0.0),
        coefficient_law=ClosedForm(strength=-2.0),
    )
    assert OLM().rebalancing.momentum == 0.9
    measure(olm, LOGITS, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    # Head a: C ~ 0 (its held-out loss falls with its training loss), so
    # its share is ~1 and λ = (e, 1, 1) / (e + 2).
    measure(olm, LOGITS, [0.5, 0.9, 0.8], [0.5, 1.0, 1.0])
    e = math.e
    lam = np.array([e, 1.0, 1.0]) / (e + 2)
    np.testing.assert_allclose(np_(olm.lambdas), lam, rtol=1e-4)
    np.testing.assert_allclose(
        np_(olm.coefficients), (3 * lam) ** -2.0, rtol=1e-4
    )
    np.testing.assert_allclose(
        np_(olm.coefficients),
        [(3 * e / (e + 2)) ** -2, (3 / (e + 2)) ** -2, (3 / (e + 2)) ** -2],
        rtol=1e-4,
    )


def test_stopping_step_by_hand():
    # min_delta 10 %: head 0 improves (1.7 < 2.0 * 0.9), head 1 does not
    # (1.9), head 2 waited 1 and reaches patience 2, head 3 stays stopped
    # though it improves.
    best, waits, stopped = olm_lib.stopping_step(
        losses=[1.7, 1.9, 2.5, 1.0],
        best=[2.0, 2.0, 2.0, 2.0],
        waits=[3.0, 0.0, 1.0, 5.0],
        stopped=[0.0, 0.0, 0.0, 1.0],
        patience=2,
        min_delta=0.1,
    )
    np.testing.assert_allclose(np_(best), [1.7, 2.0, 2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np_(waits), [0.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(np_(stopped), [0.0, 0.0, 1.0, 1.0])


def test_head_stopping_stops_a_head_after_its_patience():
    olm = make_olm(
        head_stopping=HeadStopping(patience=2, min_delta=0.0, momentum=0),
        held_out=HeldOutSchedule(every=1),
    )
    stopping = olm.head_stopping
    assert olm.head_stopping_patience == 2
    assert make_olm(head_stopping=None).unimodal_gradient_gates() is None
    np.testing.assert_allclose(np_(stopping.gates), [1.0, 1.0, 1.0])
    losses = [1.0, 1.0, 1.0]
    measure(olm, LOGITS, losses, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(np_(stopping.best_losses), [2.0] * 3)
    np.testing.assert_allclose(np_(stopping.waits), [0.0] * 3)
    # a improves; b and fused do not.
    measure(olm, LOGITS, losses, [1.5, 2.1, 2.0])
    np.testing.assert_allclose(np_(stopping.waits), [0.0, 1.0, 1.0])
    # A step without a held-out batch changes nothing.
    measure(olm, LOGITS, losses, [9.0, 9.0, 9.0], held_out_flag=0.0)
    np.testing.assert_allclose(np_(stopping.waits), [0.0, 1.0, 1.0])
    # Second measurement without improvement: b and fused stop.
    measure(olm, LOGITS, losses, [1.4, 2.0, 2.2])
    np.testing.assert_allclose(np_(stopping.gates), [1.0, 0.0, 0.0])
    # Only the modality heads are gated; a stopped head stays stopped.
    measure(olm, LOGITS, losses, [1.3, 0.5, 0.5])
    np.testing.assert_allclose(np_(olm.unimodal_gradient_gates()), [1, 0])


def test_head_stopping_momentum_averages_the_held_out_losses():
    olm = make_olm(head_stopping=HeadStopping(patience=5, momentum=0.5))
    losses = [1.0, 1.0, 1.0]
    measure(olm, LOGITS, losses, [2.0, 2.0, 2.0])
    measure(olm, LOGITS, losses, [2.0, 2.4, 1.0])
    # 0.5 * 2.0 + 0.5 * new; the best is the lowest average (with the
    # default min_delta of 1 %).
    np.testing.assert_allclose(
        np_(olm.head_stopping.losses), [2.0, 2.2, 1.5], rtol=1e-6
    )
    np.testing.assert_allclose(
        np_(olm.head_stopping.best_losses), [2.0, 2.0, 1.5], rtol=1e-6
    )


def test_head_stopping_patience_counts_steps():
    # 40 steps: 2 measurements every 20 steps, 40 every step, 1 at most.
    def patience(steps=40, **held_out):
        return OLM(
            held_out=HeldOutSchedule(**held_out),
            head_stopping=HeadStopping(patience=steps),
        ).head_stopping_patience

    assert OLM().head_stopping_patience == 2
    assert patience(schedule="step") == 40
    assert patience(30, every=20) == 2
    assert patience(5, every=20) == 1
