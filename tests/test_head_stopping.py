"""Head stopping as a part of any balancer, and OLM's presets."""

import keras
import numpy as np
import pytest
from keras import ops
from olm_testing import gradients
from olm_testing import tiny_model

import keras_olm
from keras_olm.balancers import OLM
from keras_olm.balancers import Balancer
from keras_olm.balancers import ClosedForm
from keras_olm.balancers import HeadStopping
from keras_olm.balancers import HeldOutSchedule
from keras_olm.balancers import LogitLossDescent
from keras_olm.balancers import RateEstimate
from keras_olm.balancers import Rebalancing
from keras_olm.balancers import StepRecord
from keras_olm.balancers.head_stopping import STATE_ROWS


def np_(v):
    return keras.ops.convert_to_numpy(v)


def measure(stopping, held_out_losses, flag=1.0):
    Balancer.assign_if_finite(
        stopping.update(
            ops.convert_to_tensor(np.asarray(held_out_losses, "float32")),
            ops.convert_to_tensor(flag, "float32"),
        ),
        ops.convert_to_tensor(True),
    )


def test_head_stopping_by_hand():
    stopping = HeadStopping(patience=2, min_delta=0.1, momentum=0.5)
    stopping.build_heads(3, held_out_period=1)
    np.testing.assert_allclose(np_(stopping.gates), [1.0, 1.0, 1.0])
    # First measurement: the average starts at it, it is the best, and
    # no head has waited yet.
    measure(stopping, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(np_(stopping.losses), [2.0] * 3)
    np.testing.assert_allclose(np_(stopping.best_losses), [2.0] * 3)
    np.testing.assert_allclose(np_(stopping.waits), [0.0] * 3)
    # Averages 0.5 * 2 + 0.5 * new = (1.5, 2.0, 2.5): only head 0 falls
    # below 2.0 * 0.9.
    measure(stopping, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(np_(stopping.losses), [1.5, 2.0, 2.5])
    np.testing.assert_allclose(np_(stopping.best_losses), [1.5, 2.0, 2.0])
    np.testing.assert_allclose(np_(stopping.waits), [0.0, 1.0, 1.0])
    # A step without a held-out batch changes nothing.
    measure(stopping, [9.0, 9.0, 9.0], flag=0.0)
    np.testing.assert_allclose(np_(stopping.losses), [1.5, 2.0, 2.5])
    np.testing.assert_allclose(np_(stopping.waits), [0.0, 1.0, 1.0])
    assert float(np_(stopping.measurements)) == 2.0
    # Averages (1.5, 1.5, 2.5): head 1 improves (1.5 < 1.8), head 0 does
    # not (1.5 > 1.35), head 2 waits a second time and stops.
    measure(stopping, [1.5, 1.0, 2.5])
    np.testing.assert_allclose(np_(stopping.best_losses), [1.5, 1.5, 2.0])
    np.testing.assert_allclose(np_(stopping.waits), [1.0, 0.0, 2.0])
    np.testing.assert_allclose(np_(stopping.stopped), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(np_(stopping.gates), [1.0, 1.0, 0.0])
    # A stopped head stays stopped though it improves.
    measure(stopping, [0.1, 0.1, 0.1])
    np.testing.assert_allclose(np_(stopping.stopped), [0.0, 0.0, 1.0])


def test_patience_counts_training_steps():
    assert HeadStopping(40).patience_in_measurements(20) == 2
    assert HeadStopping(40).patience_in_measurements(1) == 40
    assert HeadStopping(30).patience_in_measurements(20) == 2
    assert HeadStopping(5).patience_in_measurements(20) == 1
    balancer = Balancer(head_stopping=HeadStopping(40))
    assert balancer.held_out_period == 20
    assert balancer.head_stopping_patience == 2
    assert Balancer().head_stopping_patience is None


def test_head_stopping_config_round_trip():
    stopping = HeadStopping(patience=7, min_delta=0.02, momentum=0.3)
    config = stopping.get_config()
    assert (config["patience"], config["min_delta"], config["momentum"]) == (
        7,
        0.02,
        0.3,
    )
    assert HeadStopping.from_config(config).get_config() == config
    balancer = keras_olm.balancers.GBlend(head_stopping=stopping)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(balancer)
    )
    assert isinstance(restored.head_stopping, HeadStopping)
    assert restored.head_stopping.patience == 7
    assert restored.needs_held_out and restored.measures_steps
    assert Balancer.from_config(Balancer().get_config()).head_stopping is None
    assert isinstance(Balancer(head_stopping=True).head_stopping, HeadStopping)


def test_head_stopping_state_is_saved_with_the_model(tmp_path):
    def model():
        m = tiny_model(Balancer(head_stopping=HeadStopping()))
        m.build({"fast": (None, 16), "slow": (None, 64)})
        return m

    saved = model()
    state = np.arange(4 * 3, dtype="float32").reshape(4, 3)
    saved.balancer.head_stopping.state.assign(state)
    saved.balancer.head_stopping.measurements.assign(5.0)
    path = str(tmp_path / "m.weights.h5")
    saved.save_weights(path)
    restored = model()
    restored.load_weights(path)
    np.testing.assert_array_equal(
        np_(restored.balancer.head_stopping.state), state
    )
    assert float(np_(restored.balancer.head_stopping.measurements)) == 5.0


@pytest.mark.parametrize(
    "balancer",
    [keras_olm.balancers.JointTraining, keras_olm.MLA, keras_olm.AGM],
)
def test_balancers_without_modality_losses_refuse_it(balancer):
    with pytest.raises(ValueError, match="takes no head_stopping"):
        balancer(head_stopping=HeadStopping())


def test_only_a_head_stopping_part_is_taken():
    with pytest.raises(ValueError, match="head_stopping"):
        Balancer(head_stopping=40)


def test_state_update_composes_the_balancer_and_head_stopping():
    balancer = keras_olm.balancers.GBlend(
        refresh_every=2,
        held_out_schedule="step",
        head_stopping=HeadStopping(patience=1, min_delta=0.5),
    )
    balancer.build_heads(["a", "b", "fused"], 2)
    assert len(balancer.state_update(_record())) == 9 + 2
    balancer.apply_update(_record())
    assert int(np_(balancer.steps)) == 1
    assert float(np_(balancer.head_stopping.measurements)) == 1.0
    balancer.apply_update(_record())
    # No fall of 50 %: every head waited its one measurement and stopped.
    np.testing.assert_allclose(np_(balancer.head_stopping.stopped), [1.0] * 3)
    assert int(np_(balancer.steps)) == 2
    np.testing.assert_allclose(
        np_(balancer.unimodal_gradient_gates()), [0.0, 0.0]
    )
    logs = balancer.step_logs()
    assert float(np_(logs["a_gate"])) == 0.0 and "fused_gate" not in logs
    assert "a_blend" in logs


def _record():
    logits = ops.convert_to_tensor(np.eye(2, dtype="float32"))
    return StepRecord(
        y=ops.convert_to_tensor(np.array([0, 1])),
        logits={h: logits for h in ("a", "b", "fused")},
        head_losses=ops.convert_to_tensor(np.ones(3, "float32")),
        held_out_losses=ops.convert_to_tensor(np.ones(3, "float32")),
        held_out_flag=ops.convert_to_tensor(1.0),
    )


# --- a stopped head's loss no longer reaches its encoder -------------------

HEAD_LOSS_BALANCERS = {
    "heads": lambda hs: Balancer(head_stopping=hs),
    "olm": lambda hs: OLM(head_stopping=hs),
    "gblend": lambda hs: keras_olm.GBlend(head_stopping=hs),
    "mmpareto": lambda hs: keras_olm.MMPareto(head_stopping=hs),
    "ogm_ge": lambda hs: keras_olm.OGMGE(head_stopping=hs),
    "gradnorm": lambda hs: keras_olm.GradNorm(head_stopping=hs),
    "mmcosine": lambda hs: keras_olm.MMCosine(head_stopping=hs),
}


def _setup(make):
    model = tiny_model(balancer=make(HeadStopping()))
    model.build({"fast": (None, 16), "slow": (None, 64)})
    rng = np.random.default_rng(0)
    batch = {
        "fast": rng.normal(size=(8, 16)).astype("float32"),
        "slow": rng.normal(size=(8, 64)).astype("float32"),
    }
    y = ops.convert_to_tensor(np.arange(8) % 4)
    return model, batch, y


def _stop(model, stopped):
    stopping = model.balancer.head_stopping
    state = np_(stopping.state).copy()
    state[STATE_ROWS.index("stopped")] = stopped
    stopping.state.assign(state)


def _losses(model, batch, y):
    logits, features = model._forward_with_features(batch, training=True)
    return model.balancer.compute_loss(y, logits, features=features)


@pytest.mark.parametrize("name", sorted(HEAD_LOSS_BALANCERS))
def test_a_stopped_head_loss_no_longer_reaches_its_encoder(name):
    model, batch, y = _setup(HEAD_LOSS_BALANCERS[name])
    slow_encoder = model.encoders["slow"].trainable_variables[0]
    slow_head = model.heads["slow"].trainable_variables[0]
    variables = [slow_encoder, slow_head]

    def slow_loss():
        return _losses(model, batch, y)[1][1]

    def fused_loss():
        return _losses(model, batch, y)[1][2]

    _stop(model, [0.0, 0.0, 0.0])
    open_grads = [np_(g) for g in gradients(slow_loss, variables)]
    _stop(model, [0.0, 1.0, 0.0])
    stopped_grads = [np_(g) for g in gradients(slow_loss, variables)]
    assert np.abs(open_grads[0]).sum() > 0
    assert np.all(stopped_grads[0] == 0)
    # The head's own kernel trains as before.
    assert np.abs(stopped_grads[1]).sum() > 0
    np.testing.assert_allclose(stopped_grads[1], open_grads[1], rtol=1e-6)
    # The fused head is never stopped, whatever its entry says.
    _stop(model, [1.0, 1.0, 1.0])
    fused = np_(gradients(fused_loss, [slow_encoder])[0])
    assert np.abs(fused).sum() > 0


def test_a_stopped_modality_pce_no_longer_reaches_its_encoder():
    # PMR's modality heads are linear probes; the loss of a modality that
    # trains its encoder is its prototypical cross-entropy.
    model, batch, y = _setup(lambda hs: keras_olm.PMR(head_stopping=hs))
    balancer = model.balancer
    fast_encoder = model.encoders["fast"].trainable_variables[0]
    slow_encoder = model.encoders["slow"].trainable_variables[0]
    for m in balancer.modalities:
        prototypes = balancer._heads.layers[m].prototypes
        rng = np.random.default_rng(1)
        prototypes.assign(rng.normal(size=prototypes.shape).astype("float32"))
    # Both modalities' PCE on (weight 1), whatever their scores.
    balancer._betas = lambda y, features: (ops.ones((2,)), ops.ones((2,)))

    def pce_loss():
        total, head_losses = _losses(model, batch, y)
        return total - ops.sum(head_losses)

    variables = [fast_encoder, slow_encoder]
    _stop(model, [0.0, 0.0, 0.0])
    open_grads = [np_(g) for g in gradients(pce_loss, variables)]
    _stop(model, [0.0, 1.0, 0.0])
    stopped_grads = [np_(g) for g in gradients(pce_loss, variables)]
    assert np.abs(open_grads[1]).sum() > 0
    assert np.all(stopped_grads[1] == 0)
    np.testing.assert_allclose(stopped_grads[0], open_grads[0], rtol=1e-6)


def test_heads_with_head_stopping_train_and_log_their_gates():
    x, y = keras_olm.synthetic.make_imbalanced(64, num_classes=4, seed=0)
    held_out = keras_olm.synthetic.make_imbalanced(32, num_classes=4, seed=1)
    model = tiny_model(Balancer(head_stopping=HeadStopping(patience=1)))
    assert model.balancer.needs_held_out
    model.compile(optimizer="adam")
    history = model.fit(
        x, y, batch_size=16, epochs=1, held_out_data=held_out, verbose=0
    )
    assert "fast_gate" in history.history and "slow_gate" in history.history
    assert "fused_gate" not in history.history
    # Steps 0 of the fit measured the held-out batch (every 20 steps).
    stopping = model.balancer.head_stopping
    assert float(np_(stopping.measurements)) == 1.0


# --- OLM's presets ----------------------------------------------------------


def _inner(config, key):
    return config[key]["config"]


def test_default_olm_is_the_default_of_every_part():
    config = OLM().get_config()
    assert _inner(config, "held_out") == {"schedule": "periodic", "every": 20}
    assert _inner(config, "rate_estimate") == {
        "form": "code",
        "loss_momentum": 0.9,
        "warmup_steps": 0,
        "eps": 1e-6,
    }
    assert _inner(config, "rebalancing") == {
        "temperature": 1.0,
        "momentum": 0.9,
    }
    assert config["coefficient_law"]["class_name"] == "LogitLossDescent"
    assert _inner(config, "coefficient_law") == {
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "coefficient_ce_grad": False,
        "targets": "preserve",
        "mean_one": True,
        "coefficient_range": (0.1, 10.0),
    }
    stopping = _inner(config, "head_stopping")
    assert (stopping["patience"], stopping["min_delta"]) == (40, 0.01)
    assert stopping["momentum"] == 0.5
    assert OLM(head_stopping=None).get_config()["head_stopping"] is None


def test_paper_preset():
    olm = OLM.paper()
    config = olm.get_config()
    assert olm.held_out_schedule == "step" and olm.held_out_period == 1
    assert _inner(config, "rate_estimate") == {
        "form": "paper",
        "loss_momentum": 0.0,
        "warmup_steps": 0,
        "eps": 1e-6,
    }
    assert _inner(config, "rebalancing") == {
        "temperature": None,
        "momentum": 0.0,
    }
    assert config["coefficient_law"]["class_name"] == "LogitLossDescent"
    assert _inner(config, "coefficient_law") == {
        "optimizer": "sgd",
        "learning_rate": 1e-3,
        "coefficient_ce_grad": False,
        "targets": "faithful",
        "mean_one": False,
        "coefficient_range": None,
    }
    assert config["head_stopping"] is None and olm.head_stopping is None
    assert OLM.paper(learning_rate=0.1).coefficient_law.learning_rate == 0.1
    clone = OLM.from_config(config)
    assert clone.get_config() == config


def test_presets_take_overrides_of_any_part():
    olm = OLM.authors(26, head_stopping=HeadStopping(patience=3))
    assert olm.head_stopping.patience == 3
    assert olm.rate_estimate.warmup_steps == 26
    olm = OLM.paper(held_out=HeldOutSchedule(every=5))
    assert olm.held_out_period == 5
    olm = OLM(
        rate_estimate=RateEstimate(form="paper"),
        rebalancing=Rebalancing(temperature=None),
        coefficient_law=LogitLossDescent(optimizer="sgd"),
    )
    assert olm.get_config()["coefficient_law"]["class_name"] == (
        "LogitLossDescent"
    )
    assert ClosedForm(coefficient_range=[0.2, 5]).coefficient_range == (
        0.2,
        5.0,
    )
