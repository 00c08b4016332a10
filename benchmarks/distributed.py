"""Training on two devices against one: the figures of README "More than
one device".

Runs the runs of `tests/distributed_runs.py` that concern the active
backend (`KERAS_BACKEND`): the tiny OLM model, six steps of global batches
of 16 from the same weights, on one device and on two (devices, replicas
or processes), and prints the largest absolute difference of OLM's state
(every row of `OLM.state`) and of the weights, and each run's wall time.

    KERAS_BACKEND=jax python benchmarks/distributed.py
"""

import os
import sys
import time

import keras

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
)

from distributed_runs import launch  # noqa: E402
from test_distributed import max_differences  # noqa: E402

RUNS = {
    "jax": {
        "DataParallel, 2 host devices": ("jax_data_parallel", 1),
        "DataParallel, 2 jax.distributed processes": ("jax_processes", 2),
    },
    "tensorflow": {
        "MirroredStrategy, 2 logical CPUs": ("tf_mirrored", 1),
    },
    "torch": {
        "2 gloo processes": ("torch_ddp", 2),
    },
}


def main():
    backend = keras.backend.backend()
    start = time.perf_counter()
    (reference,) = launch("single", count=1)
    print(f"{backend}, one device: {time.perf_counter() - start:.1f} s")
    for name, (mode, count) in RUNS[backend].items():
        start = time.perf_counter()
        there = launch(mode, count=count)[0]
        seconds = time.perf_counter() - start
        state, weights = max_differences(reference, there)
        print(
            f"{backend}, {name}: OLM state {state:.1e}, weights "
            f"{weights:.1e} ({seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
