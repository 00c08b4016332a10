"""Runs of `tests/test_distributed_balancers.py` (not a test module).

Each run trains one tiny model per registered balancer (aliases once:
`balancer_names`) from the same weights on the same global batches, on
one device or on several, and prints, as one JSON line, every variable of
each model (its weights, the balancer's state, the step's own state) in
model order; `BALANCERS` (comma-separated names) picks some. The
distributed runs set their device counts before the backend is
imported, so each is its own process (or two):

    python tests/distributed_balancers.py single
    python tests/distributed_balancers.py jax_data_parallel
    python tests/distributed_balancers.py tf_mirrored
    python tests/distributed_balancers.py torch_ddp
    python tests/distributed_balancers.py tf_multi_worker

(`KERAS_BACKEND` picks the backend; `single` runs on any backend.)
"""

import json
import os
import sys

import distributed_runs
from distributed_runs import DEVICES
from distributed_runs import shard

STEPS = 4
GLOBAL_BATCH = 16
CLASSES = 4


def balancer_names():
    """The names of `REGISTRY`, each class once (the first name that
    maps to it: `"multihead"` is `"heads"`)."""
    import keras_olm

    names, seen = [], set()
    for name, cls in keras_olm.balancers.REGISTRY.items():
        if cls not in seen:
            seen.add(cls)
            names.append(name)
    return names


def selected_names():
    """The names in `BALANCERS` (comma-separated), else every one."""
    chosen = os.environ.get("BALANCERS")
    return chosen.split(",") if chosen else balancer_names()


def make_data():
    """Training and held-out data: `STEPS` global batches and two."""
    import keras_olm

    x, y = keras_olm.synthetic.make_imbalanced(
        STEPS * GLOBAL_BATCH, num_classes=CLASSES, seed=0
    )
    held_out = keras_olm.synthetic.make_imbalanced(
        2 * GLOBAL_BATCH, num_classes=CLASSES, seed=1
    )
    return x, y, held_out


def make_model(name):
    """The tiny model of balancer `name` (with the component harness'
    tiny arguments: a held-out batch every 2 steps, a seeded noise
    stream), built, with fixed weights, compiled (SGD)."""
    import keras
    import numpy as np
    from component_harness import build_tiny

    import keras_olm

    def encoder():
        return keras.Sequential([keras.layers.Dense(8, activation="relu")])

    model = keras_olm.BalancedMultimodalModel(
        {"fast": encoder(), "slow": encoder()},
        num_classes=CLASSES,
        balancer=build_tiny(keras_olm.balancers.REGISTRY[name]),
    )
    model.build({"fast": (None, 16), "slow": (None, 64)})
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def variables(model):
    """Every variable of the model, in model order, as `[path, list]`."""
    import keras

    return [
        [v.path, keras.ops.convert_to_numpy(v).tolist()]
        for v in model.variables
    ]


def fit(model, data, batch_size=GLOBAL_BATCH):
    """Fits one epoch; returns `variables(model)` as `"variables"`, the
    steps applied, and how far the weights and the balancer's state
    moved."""
    import keras
    import numpy as np

    def values(variables):
        return [
            keras.ops.convert_to_numpy(v).astype("float64") for v in variables
        ]

    def moved(before, variables):
        return max(
            [
                float(np.max(np.abs(a - b)))
                for a, b in zip(before, values(variables))
                if a.size
            ],
            default=0.0,
        )

    state = model.balancer.variables
    weights_before = values(model.trainable_variables)
    state_before = values(state)
    x, y, held_out = data
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        held_out_data=held_out if model.balancer.needs_held_out else None,
        verbose=0,
    )
    return {
        "variables": variables(model),
        "steps": int(keras.ops.convert_to_numpy(model.training_state.steps)),
        "weights_moved": moved(weights_before, model.trainable_variables),
        "balancer_state": len(state),
        "balancer_moved": moved(state_before, state),
    }


def single():
    """Every balancer on one device, in this process."""
    data = make_data()
    return {name: fit(make_model(name), data) for name in selected_names()}


def jax_data_parallel():
    """`keras.distribution.DataParallel` over two host CPU devices."""
    distributed_runs._jax_data_parallel()
    import keras

    assert len(keras.distribution.list_devices("cpu")) == DEVICES
    return single()


def tf_mirrored():
    """`tf.distribute.MirroredStrategy` over two logical CPU devices; each
    model made, compiled and fitted in the strategy's scope."""
    strategy = distributed_runs._mirrored_strategy()
    assert strategy.num_replicas_in_sync == DEVICES
    data = make_data()
    out = {}
    for name in selected_names():
        with strategy.scope():
            model = make_model(name)
            out[name] = fit(model, data)
        out[name]["replica_spread"] = distributed_runs._replica_spread(model)
    return out


def _shards(rank, count):
    x, y, (held_x, held_y) = make_data()
    return (
        {m: shard(v, rank, count) for m, v in x.items()},
        shard(y, rank, count),
        (
            {m: shard(v, rank, count) for m, v in held_x.items()},
            shard(held_y, rank, count),
        ),
    )


def torch_ddp():
    """One of the processes of a `torch.distributed` gloo group; every
    balancer, each `fit` on this process's half of every global batch."""
    import torch

    rank, count = distributed_runs._torch_process_group()
    try:
        data = _shards(rank, count)
        out = {
            name: fit(make_model(name), data, GLOBAL_BATCH // count)
            for name in selected_names()
        }
    finally:
        torch.distributed.destroy_process_group()
    return out if rank == 0 else None


def main(mode):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = globals()[mode]()
    if out is not None:
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
