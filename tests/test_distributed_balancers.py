"""Every registered balancer trains on several devices as on one.

One test per balancer of `keras_olm.balancers.REGISTRY` (each class once)
and distribution (some `slow` under TensorFlow and JAX, see `ALWAYS`):
its model (`tests/distributed_balancers.py`), trained for four SGD
steps on the same global batches of 16 from the same weights, ends
with the weights, balancer state and step counters of the run on one
device, on two replicas of `tf.distribute.MirroredStrategy`
(two logical CPUs), under JAX's `DataParallel` (two host CPU devices) and
in a `torch.distributed` gloo group of two processes. Each backend's
distributed run trains every balancer whose test runs in one subprocess
(or two processes), started once per module.
"""

import distributed_balancers
import keras
import numpy as np
import pytest
from distributed_balancers import STEPS
from distributed_balancers import balancer_names
from distributed_balancers import single
from distributed_runs import DEVICES
from distributed_runs import launch

# Float32, the same global batches: a distributed run sums each share of
# the batch, then the shares (the all-reduce), where one device sums the
# batch at once. Each such sum rounds at float32's 1.2e-7 of its size;
# over four steps the runs measured at most 6.3e-7 apart (MMCosine's
# weights, values of order 1); 1e-5 leaves a margin of 15 and is far
# below what a balancer that reads one share only does (MMPareto's
# cosines under MirroredStrategy: 1e-1; PMR's weights under torch:
# 2e-2).
TOLERANCE = 1e-5

BACKEND = keras.backend.backend()

#: Balancers whose step does more than gather the batch's measurements
#: under distribution: gradients summed over the replicas before
#: `transform_gradients` (MMPareto's min-norm weights, OGM-GE's noise) and
#: a loss weighed by the global batch's sums (PMR). They run in the default
#: suite on every backend; the others too under torch, where the runs are
#: short, and as `slow` tests under TensorFlow and JAX, where compiling
#: every balancer's step twice adds minutes.
ALWAYS = ("mmpareto", "ogm_ge", "pmr")
SLOW_BACKENDS = ("tensorflow", "jax")


def _param(name):
    slow = BACKEND in SLOW_BACKENDS and name not in ALWAYS
    return pytest.param(name, marks=[pytest.mark.slow] if slow else [])


NAMES = [_param(name) for name in balancer_names()]

#: The distributed run of each backend: its mode and its process count.
RUNS = {
    "tensorflow": ("tf_mirrored", 1),
    "jax": ("jax_data_parallel", 1),
    "torch": ("torch_ddp", DEVICES),
}


@pytest.fixture(scope="module")
def selected(request):
    """The balancers whose tests this session runs, comma-separated."""
    names = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_balancer_matches_one_device"
    }
    return ",".join(n for n in balancer_names() if n in names)


@pytest.fixture(scope="module")
def reference(selected):
    """The selected balancers on one device, in this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BALANCERS", selected)
        return single()


@pytest.fixture(scope="module")
def distributed(selected):
    """The selected balancers on two devices or processes, in one
    subprocess (or one per process)."""
    if BACKEND == "torch":
        import torch

        if not torch.distributed.is_available():
            pytest.skip("torch.distributed is not available")
    mode, count = RUNS[BACKEND]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BALANCERS", selected)
        return launch(
            mode,
            count=count,
            timeout=900,
            script=distributed_balancers.__file__,
        )[0]


@pytest.mark.parametrize("name", NAMES)
def test_balancer_matches_one_device(name, reference, distributed):
    want, got = reference[name], distributed[name]
    # Guards against comparing untouched state: every step was applied,
    # and the weights and the balancer's state moved.
    assert want["steps"] == got["steps"] == STEPS
    assert want["weights_moved"] > 1e-3
    if want["balancer_state"]:
        assert want["balancer_moved"] > 0
    for (path, expected), (_, value) in zip(
        want["variables"], got["variables"], strict=True
    ):
        np.testing.assert_allclose(
            value, expected, rtol=TOLERANCE, atol=TOLERANCE, err_msg=path
        )
    if BACKEND == "tensorflow":
        # Every replica holds the same weights and balancer state.
        assert got["replica_spread"] == 0.0
