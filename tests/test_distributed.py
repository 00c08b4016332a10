"""Training on more than one device matches training on one.

Each test runs under the backend it concerns (`KERAS_BACKEND`) and skips
under the others. The runs (`tests/distributed_runs.py`) train the same
tiny OLM model from the same weights on the same global batches of 16:
six steps, Adam on the model, OLM with a held-out batch every second step.
The device counts must be set before the backend is imported, so every
distributed run is a subprocess (or two, one per process).
"""

import keras
import numpy as np
import pytest
from distributed_runs import DEVICES
from distributed_runs import HEAD_STOPPING_ROWS
from distributed_runs import launch
from distributed_runs import single

from keras_olm.balancers.olm import STATE_ROWS

# Float32, the same global batches: the runs differ in the order of the
# sums over the batch only (measured: at most 5.4e-7 on OLM's state and
# 6e-8 on the weights on every engine, benchmarks/README.md).
ATOL = 1e-5


def backend_is(name):
    return pytest.mark.skipif(
        keras.backend.backend() != name,
        reason=f"runs under KERAS_BACKEND={name}",
    )


@pytest.fixture(scope="module")
def reference():
    """The run on one device, in this process."""
    out = single()
    # Guards the comparisons against comparing untouched state.
    assert out["steps"] == 6 and out["held_out_steps"] == 3
    assert np.ptp(out["coefficients"]) > 1e-2
    assert np.ptp(out["lambdas"]) > 1e-2
    assert list(out["stopped"]) == [1.0, 1.0, 1.0]
    return out


def max_differences(reference, there):
    """Largest absolute difference of OLM's state and of the weights."""
    assert there["steps"] == reference["steps"]
    assert there["held_out_steps"] == reference["held_out_steps"]
    state = max(
        np.max(np.abs(np.subtract(reference[row], there[row])))
        for row in STATE_ROWS + tuple(HEAD_STOPPING_ROWS.values())
    )
    weights = max(
        np.max(np.abs(np.subtract(a, b)))
        for a, b in zip(reference["weights"], there["weights"], strict=True)
    )
    return state, weights


def assert_matches(reference, there):
    state, weights = max_differences(reference, there)
    assert state < ATOL, state
    assert weights < ATOL, weights


@backend_is("jax")
def test_jax_data_parallel_on_two_host_devices(reference):
    (there,) = launch("jax_data_parallel", count=1)
    assert there["devices"] == DEVICES
    assert_matches(reference, there)


@backend_is("jax")
def test_jax_data_parallel_skips_a_non_finite_step():
    # The inf is in the second device's half of the second batch.
    (there,) = launch("jax_data_parallel_non_finite", count=1)
    assert "step 2" in there["error"]
    assert there["moved"] == 0.0 and there["compared"] > 0


@backend_is("jax")
def test_jax_two_processes(reference):
    there = launch("jax_processes")[0]
    assert there["processes"] == DEVICES
    assert_matches(reference, there)


@backend_is("tensorflow")
def test_tensorflow_mirrored_strategy_on_two_logical_cpus(reference):
    (there,) = launch("tf_mirrored", count=1)
    assert there["replicas"] == DEVICES
    # Every replica holds the same weights, optimizer and OLM state.
    assert there["replica_spread"] == 0.0
    assert_matches(reference, there)


@backend_is("tensorflow")
def test_tensorflow_mirrored_strategy_with_several_steps_per_execution(
    reference,
):
    (there,) = launch("tf_mirrored_steps_per_execution", count=1, timeout=300)
    assert there["replicas"] == DEVICES
    assert there["replica_spread"] == 0.0
    assert_matches(reference, there)


@backend_is("tensorflow")
def test_tensorflow_mirrored_strategy_fit_inside_the_scope(reference):
    # Made, compiled and fitted in the strategy's scope, as Keras users
    # write it; a plain keras.Model fits there beside it.
    (there,) = launch("tf_mirrored_fit_in_scope", count=1, timeout=300)
    assert there["plain_moved"] > 0
    assert there["replicas"] == DEVICES
    assert there["replica_spread"] == 0.0
    assert_matches(reference, there)


@backend_is("tensorflow")
def test_tensorflow_multi_worker_mirrored_strategy_on_two_local_workers(
    reference,
):
    # Two worker processes on localhost (`TF_CONFIG`), one CPU each; both
    # fit the same global batches, which the strategy splits.
    there = launch("tf_multi_worker", timeout=300)[0]
    assert there["replicas"] == DEVICES
    assert_matches(reference, there)


@backend_is("tensorflow")
def test_tensorflow_mirrored_strategy_skips_a_non_finite_step():
    # The inf is in the second replica's half of the second batch.
    (there,) = launch("tf_mirrored_non_finite", count=1)
    assert "step 2" in there["error"]
    # No weight, optimizer variable or balancer variable moved.
    assert there["moved"] == 0.0 and there["compared"] > 0
    assert there["replica_spread"] == 0.0


@backend_is("torch")
def test_torch_two_gloo_processes(reference):
    import torch

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    there = launch("torch_ddp")[0]
    assert there["processes"] == DEVICES
    assert there["process_spread"] == 0.0
    assert_matches(reference, there)


@backend_is("torch")
def test_torch_two_gloo_processes_skip_a_non_finite_step_together():
    import torch

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    # The inf is in the second process's half of the second batch; both
    # processes skip the step and stop there.
    first, second = launch("torch_ddp_non_finite")
    # Each process names the step; both name what was not finite on any
    # process (the flags are summed over the processes).
    for out in (first, second):
        assert "epoch 1, step 2 " in out["error"]
        assert "the loss of head 'fast'" in out["error"]
    for out in (first, second):
        assert out["moved"] == 0.0 and out["compared"] > 0
