"""The same seeds and data give the same OLM state on every backend."""

import importlib.util

import keras
import numpy as np
import pytest
from olm_testing import deterministic_run
from olm_testing import run_in_backend

BACKENDS = ("tensorflow", "jax", "torch")
# Six SGD steps (two epochs, a held-out batch every second step) in float32
# from identical weights: the backends' kernels
# differ in summation order only, so 1e-4 relative is ample.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def here():
    return deterministic_run()


@pytest.mark.parametrize("other", BACKENDS)
def test_coefficients_and_losses_agree_across_backends(here, other):
    current = keras.backend.backend()
    if other == current:
        pytest.skip("same backend")
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    if importlib.util.find_spec(module[other]) is None:
        pytest.skip(f"{other} is not installed")
    there = run_in_backend(
        other,
        "import json, olm_testing; "
        "print(json.dumps(olm_testing.deterministic_run()))",
    )
    assert here["held_out_steps"] == there["held_out_steps"]
    for key in (
        "coefficients",
        "lambdas",
        "train_losses",
        "held_out_losses",
        "stopping_losses",
        "stopped",
    ):
        np.testing.assert_allclose(
            here[key], there[key], rtol=RTOL, atol=ATOL, err_msg=key
        )
    for key, value in here["history"].items():
        assert there["history"][key] == pytest.approx(
            value, rel=RTOL, abs=ATOL
        ), key


def test_the_run_moves_the_coefficients(here):
    """Guards the comparison above against comparing untouched state."""
    # Held-out batches at steps 0, 2 and 4 of the fit, across the epoch
    # boundary (3 steps an epoch).
    assert here["steps"] == 6 and here["held_out_steps"] == 3
    assert np.ptp(here["coefficients"]) > 1e-3
    assert np.ptp(here["lambdas"]) > 1e-4
    assert here["stopped"] == [1.0, 1.0, 1.0]
