"""Every registered balancer of the field: short fit, `.keras` round trip.

The per-method math (against hand-computed numbers) and the direction of
each method's effect are tested in `test_balancer_<name>.py`.
"""

import os

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

import keras_olm
from keras_olm.synthetic import make_imbalanced


def np_(x):
    return keras.ops.convert_to_numpy(x)


def _ogm_ge_state(balancer, steps):
    # Every step counted; the coefficients of Eq. 10 are in (0, 1].
    assert int(np_(balancer.steps)) == steps
    k = np_(balancer.coefficients)
    assert np.all((k > 0) & (k <= 1)) and k.min() < 1
    # The noise generator advanced inside the traced steps (on JAX the
    # state assigned in transform_gradients must be kept), so every step
    # drew new noise.
    fresh = keras.random.SeedGenerator(balancer.seed).state
    assert not np.array_equal(np_(balancer.seed_generator.state), np_(fresh))


def _gblend_state(balancer, steps):
    # Re-estimated at the end of every 4-step window, after the first.
    assert int(np_(balancer.windows)) == steps // 4
    w = np_(balancer.weights_)
    assert not np.allclose(w, 1.0)
    np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-5)


def _gradnorm_state(balancer, steps):
    assert int(np_(balancer.steps)) == steps
    w = np_(balancer.loss_weights)
    assert not np.allclose(w, 1.0)
    np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-5)
    assert np.all(np_(balancer.grad_norms) > 0)


def _pmr_state(balancer, steps):
    assert int(np_(balancer.steps)) == steps
    for m in balancer.modalities:
        head = balancer._heads.layers[m]
        np.testing.assert_array_equal(np_(head.seen), np.ones(4))
        assert np.abs(np_(head.prototypes)).sum() > 0


def _agm_state(balancer, steps):
    assert int(np_(balancer.steps)) == steps
    k = np_(balancer.coefficients)
    assert np.all(k > 0) and not np.allclose(k, 1.0)
    # The running mean of the mono scores (cross-entropies) is positive.
    assert np.all(np_(balancer.running_scores) > 0)


def _mla_state(balancer, steps):
    assert int(np_(balancer.steps)) == steps
    # The projector moved away from the identity and keeps a unit norm.
    p = np_(balancer._heads.layers["shared"].projector)
    assert not np.allclose(p, np.eye(len(p)))
    assert np.linalg.norm(p) == pytest.approx(1.0, rel=1e-4)


def _mmpareto_state(balancer, steps):
    assert int(np_(balancer.steps)) == steps
    w = np_(balancer.multimodal_weights)
    assert np.all((w >= 0) & (w <= 1))
    assert np.all(np.abs(np_(balancer.cosines)) <= 1 + 1e-6)


def _stateless(balancer, steps):
    assert not balancer.non_trainable_weights


#: Balancer name -> (constructor arguments for a short run, a check of its
#: state after `steps` training steps).
BALANCERS = {
    "ogm_ge": (dict(alpha=0.5, seed=3), _ogm_ge_state),
    "mmcosine": (dict(scale=8.0), _stateless),
    "gblend": (dict(refresh_every=4, held_out_schedule="step"), _gblend_state),
    "gradnorm": (dict(alpha=1.5), _gradnorm_state),
    "pmr": (dict(alpha=1.0), _pmr_state),
    "agm": (dict(alpha=1.0), _agm_state),
    "mla": (dict(alpha=0.1), _mla_state),
    "mmpareto": (dict(scale=1.5), _mmpareto_state),
}


@pytest.fixture(scope="module")
def data():
    # 320 samples: 10 full batches of 32, or 9 and one held-out batch of
    # 32 when 10% is held out (uneven batches would retrace the step).
    return make_imbalanced(320, seed=0)


def test_every_balancer_is_registered():
    for name in BALANCERS:
        balancer = keras_olm.balancers.get(name)
        assert isinstance(balancer, keras_olm.balancers.Balancer)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_short_fit_is_finite_and_round_trips(name, data, tmp_path):
    x, y = data
    kwargs, check_state = BALANCERS[name]
    balancer = keras_olm.balancers.get(name, **kwargs)
    model = tiny_model(balancer)
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), (name, key, values)
    assert history.history["fused_loss"][-1] < history.history["fused_loss"][0]
    check_state(model.balancer, 18 if balancer.needs_held_out else 20)

    path = os.path.join(tmp_path, f"{name}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.balancer) is type(model.balancer)
    config = restored.balancer.get_config()
    expected = model.balancer.get_config()
    for key in kwargs:
        assert config[key] == expected[key], key
    # Every piece of state (the balancer's and any in its heads) returns.
    before = model.non_trainable_variables
    after = restored.non_trainable_variables
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np_(b), np_(a), err_msg=a.path)
    few = {m: v[:8] for m, v in x.items()}
    before, after = model.head_logits(few), restored.head_logits(few)
    for h in model.head_names:
        np.testing.assert_allclose(np_(after[h]), np_(before[h]), atol=1e-6)
