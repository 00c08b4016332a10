"""Runs of `tests/test_distributed.py` (not a test module).

Each run trains the same tiny OLM model from the same weights on the same
global batches, on one device or on several, and prints its final state
as one JSON line: OLM's `state` rows and counters, and every trainable
weight. The distributed runs set device counts before their backend is
imported, so each is started as its own process:

    python tests/distributed_runs.py single
    python tests/distributed_runs.py jax_data_parallel
    python tests/distributed_runs.py tf_mirrored
    python tests/distributed_runs.py torch_ddp

(`KERAS_BACKEND` picks the backend; `single` runs on any backend.)
"""

import json
import os
import sys

STEPS = 6
GLOBAL_BATCH = 16
DEVICES = 2


def make_data():
    import keras_olm

    x, y = keras_olm.synthetic.make_imbalanced(
        STEPS * GLOBAL_BATCH, num_classes=3, seed=0
    )
    held_out = keras_olm.synthetic.make_imbalanced(
        2 * GLOBAL_BATCH, num_classes=3, seed=1
    )
    return x, y, held_out


def make_model(activation="relu", steps_per_execution=1):
    """The tiny OLM model, built, with fixed weights, compiled (Adam)."""
    import keras
    import numpy as np

    import keras_olm

    def encoder():
        return keras.Sequential([keras.layers.Dense(8, activation=activation)])

    model = keras_olm.BalancedMultimodalModel(
        {"fast": encoder(), "slow": encoder()},
        num_classes=3,
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("periodic", 2),
            # The modulation on, and every head stopped at the second
            # held-out measurement: the last steps run with the gates shut.
            coefficient_law=keras_olm.balancers.ClosedForm(strength=-2.0),
            head_stopping=keras_olm.balancers.HeadStopping(
                patience=1, min_delta=0.5
            ),
        ),
    )
    model.build({"fast": (None, 16), "slow": (None, 64)})
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        steps_per_execution=steps_per_execution,
    )
    return model


#: Head stopping's state rows, by the names `final_state` gives them.
HEAD_STOPPING_ROWS = {
    "losses": "stopping_losses",
    "best_losses": "best_stopping_losses",
    "waits": "stopping_waits",
    "stopped": "stopped",
}


def final_state(model):
    """OLM's state and counters, head stopping's state and the trainable
    weights, as lists."""
    import keras

    from keras_olm.balancers.head_stopping import STATE_ROWS as STOPPING
    from keras_olm.balancers.olm import COUNTERS
    from keras_olm.balancers.olm import STATE_ROWS

    def numpy(v):
        return keras.ops.convert_to_numpy(v)

    state = numpy(model.balancer.state.value)
    counters = numpy(model.balancer.counters.value)
    out = {name: state[i].tolist() for i, name in enumerate(STATE_ROWS)}
    stopping = numpy(model.balancer.head_stopping.state.value)
    out.update(
        {
            HEAD_STOPPING_ROWS[n]: stopping[i].tolist()
            for i, n in enumerate(STOPPING)
        }
    )
    out.update({name: int(counters[i]) for i, name in enumerate(COUNTERS)})
    out["weights"] = [
        numpy(v).ravel().tolist() for v in model.trainable_variables
    ]
    return out


def fit(model):
    x, y, held_out = make_data()
    model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=1,
        shuffle=False,
        held_out_data=held_out,
        verbose=0,
    )
    return final_state(model)


def single():
    return fit(make_model())


def _jax_data_parallel():
    """Sets `keras.distribution.DataParallel` over two host CPU devices."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={DEVICES}"
    )
    import keras

    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == DEVICES, devices
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )


def jax_data_parallel_non_finite():
    """`fit_non_finite` under `DataParallel` on two host devices."""
    _jax_data_parallel()
    return fit_non_finite(make_model(activation=None))


def jax_data_parallel():
    """`keras.distribution.DataParallel` over two host CPU devices."""
    _jax_data_parallel()
    model = make_model()
    out = fit(model)
    # The weights are replicated over both devices.
    value = model.trainable_variables[0].value
    out["devices"] = len(value.sharding.device_set)
    return out


def _mirrored_strategy():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES
    )
    devices = [f"/cpu:{i}" for i in range(DEVICES)]
    return tf.distribute.MirroredStrategy(devices)


def _replica_spread(model):
    """Largest difference between the replicas' copies of any variable of
    the model, its optimizer or its balancer."""
    import numpy as np

    spread = 0.0
    for v in model.variables + model.optimizer.variables:
        copies = [np.asarray(c) for c in v.value.values]
        assert len(copies) == DEVICES, v.path
        for c in copies[1:]:
            spread = max(spread, float(np.max(np.abs(c - copies[0]))))
    return spread


def tf_mirrored():
    """`tf.distribute.MirroredStrategy` over two logical CPU devices."""
    strategy = _mirrored_strategy()
    with strategy.scope():
        model = make_model()
    out = fit(model)
    out["replicas"] = strategy.num_replicas_in_sync
    out["replica_spread"] = _replica_spread(model)
    return out


def tf_mirrored_steps_per_execution():
    """`tf_mirrored` with four steps per compiled call: calls with a
    held-out batch run on a list of batches taken on the host."""
    strategy = _mirrored_strategy()
    with strategy.scope():
        model = make_model(steps_per_execution=4)
    out = fit(model)
    out["replicas"] = strategy.num_replicas_in_sync
    out["replica_spread"] = _replica_spread(model)
    return out


def tf_mirrored_fit_in_scope():
    """`tf_mirrored` with `fit` in the strategy's scope too, as Keras users
    write it; a plain `keras.Model` fitted the same way beside it."""
    import keras
    import numpy as np

    strategy = _mirrored_strategy()
    x, y, _ = make_data()
    with strategy.scope():
        inputs = {m: keras.Input((v.shape[1],), name=m) for m, v in x.items()}
        merged = keras.layers.Concatenate()(list(inputs.values()))
        plain = keras.Model(inputs, keras.layers.Dense(3)(merged))
        plain.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = keras.ops.convert_to_numpy(plain.trainable_variables[0])
        plain.fit(x, y, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
        after = keras.ops.convert_to_numpy(plain.trainable_variables[0])
        model = make_model()
        out = fit(model)
    out["plain_moved"] = float(np.max(np.abs(after - before)))
    out["replicas"] = strategy.num_replicas_in_sync
    out["replica_spread"] = _replica_spread(model)
    return out


def tf_multi_worker():
    """One of two workers of a `tf.distribute.MultiWorkerMirroredStrategy`
    on localhost (`TF_CONFIG` from `RANK`, `WORLD_SIZE` and two ports from
    `MASTER_PORT`); model, compile and `fit` in the strategy's scope, on
    the same global batches on every worker (the strategy shards them)."""
    import tensorflow as tf

    rank, count = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    port = int(os.environ["MASTER_PORT"])
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {
                "worker": [f"localhost:{port + i}" for i in range(count)]
            },
            "task": {"type": "worker", "index": rank},
        }
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = make_model()
        out = fit(model)
    out["replicas"] = strategy.num_replicas_in_sync
    return out if rank == 0 else None


def _values(model):
    """Every weight, balancer and optimizer variable, as numpy; not the
    record of the fault itself (`training_state/faults`)."""
    import keras

    variables = (
        model.trainable_variables
        + model.non_trainable_variables
        + model.optimizer.variables
    )
    return {
        v.path: keras.ops.convert_to_numpy(v.value)
        for v in variables
        if v is not model.training_state.faults
    }


def tf_mirrored_non_finite():
    """An inf input on the second replica's share of the second step: the
    step must move no variable on either replica."""
    strategy = _mirrored_strategy()
    with strategy.scope():
        model = make_model(activation=None)
    out = fit_non_finite(model)
    out["replica_spread"] = _replica_spread(model)
    return out


def single_non_finite():
    return fit_non_finite(make_model(activation=None))


def fit_non_finite(model, rank=0, count=1):
    """Fits with an inf in sample 3 of the second half of the second
    batch; returns the error raised and how far any variable moved in
    that step. (Linear encoders carry the inf into NaN logits; a ReLU
    may zero it and leave the loss finite.)"""
    import keras
    import numpy as np

    import keras_olm

    x, y, held_out = make_data()
    x = {m: v.copy() for m, v in x.items()}
    x["fast"][GLOBAL_BATCH + GLOBAL_BATCH // 2 + 3] = np.inf
    if count > 1:
        x, y, held_out = _shards(rank, count, (x, y, held_out))
    after_first = {}

    class AfterFirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                # `self.model`: under JAX it syncs the state first.
                after_first.update(_values(self.model))

    error = None
    try:
        model.fit(
            x,
            y,
            batch_size=GLOBAL_BATCH // count,
            epochs=1,
            shuffle=False,
            held_out_data=held_out,
            callbacks=[AfterFirstStep()],
            verbose=0,
        )
    except keras_olm.NonFiniteLossError as e:
        error = str(e)
    moved = {
        path: float(np.max(np.abs(value - after_first[path])))
        for path, value in _values(model).items()
    }
    return {
        "error": error,
        "moved": max(moved.values()),
        "compared": len(moved),
    }


def shard(array, rank, count):
    """Process `rank`'s share of every global batch of `array`: the
    `rank`-th of `count` equal slices, as a strategy splits a batch."""
    per = GLOBAL_BATCH // count
    shape = array.shape[1:]
    return array.reshape(-1, count, per, *shape)[:, rank].reshape(-1, *shape)


def _shards(rank, count, data=None):
    """The training and held-out data (`make_data()`'s by default) of
    process `rank`."""
    x, y, (held_out_x, held_out_y) = data or make_data()
    x = {m: shard(v, rank, count) for m, v in x.items()}
    held_out_x = {m: shard(v, rank, count) for m, v in held_out_x.items()}
    return (
        x,
        shard(y, rank, count),
        (held_out_x, shard(held_out_y, rank, count)),
    )


def jax_processes():
    """One of the processes of a two-process JAX run on localhost
    (`jax.distributed` with CPU collectives), `DataParallel` over one CPU
    device per process; `fit` on this process's half of every global
    batch."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    rank, count = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    keras.distribution.initialize(
        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        num_processes=count,
        process_id=rank,
    )
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == count, devices
    # Each process passes its own shard (arrays: Keras cannot shard them).
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
    )
    x, y, held_out = _shards(rank, count)
    model = make_model()
    model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH // count,
        epochs=1,
        shuffle=False,
        held_out_data=held_out,
        verbose=0,
    )
    out = final_state(model)
    out["processes"] = jax.process_count()
    return out if rank == 0 else None


def _torch_process_group():
    import torch

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def torch_ddp_non_finite():
    """`fit_non_finite` in each process of a gloo group, on its shard: the
    inf lands in the last process's shard of the second step."""
    import torch

    rank, count = _torch_process_group()
    try:
        out = fit_non_finite(make_model(activation=None), rank, count)
    finally:
        torch.distributed.destroy_process_group()
    # Every process reports its own.
    out["rank"] = rank
    return out


def torch_ddp():
    """One of the processes of a `torch.distributed` gloo group: `fit` on
    this process's half of every global batch (`RANK`, `WORLD_SIZE`,
    `MASTER_ADDR` and `MASTER_PORT` from the environment)."""
    import numpy as np
    import torch

    rank, count = _torch_process_group()
    try:
        x, y, held_out = _shards(rank, count)
        model = make_model()
        model.fit(
            x,
            y,
            batch_size=GLOBAL_BATCH // count,
            epochs=1,
            shuffle=False,
            held_out_data=held_out,
            verbose=0,
        )
        out = final_state(model)
        out["processes"] = count
        mine = torch.as_tensor(
            np.concatenate(
                [np.ravel(v) for v in _values(model).values()]
            ).astype("float32")
        )
        copies = [torch.empty_like(mine) for _ in range(count)]
        torch.distributed.all_gather(copies, mine)
        out["process_spread"] = max(
            float((c - copies[0]).abs().max()) for c in copies
        )
    finally:
        torch.distributed.destroy_process_group()
    return out if rank == 0 else None


def launch(mode, count=DEVICES, backend=None, timeout=600, script=None):
    """Runs `mode` in `count` processes on localhost; returns what each
    printed (`None` where nothing), in process order.

    `script` is the file whose function `mode` is (this one by default);
    the processes import `keras_olm` from the checkout these tests belong
    to (`PYTHONPATH`), as the test process does.
    """
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    if backend:
        env["KERAS_BACKEND"] = backend
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(count),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(script or __file__), mode],
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(count)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{out}\n{err[-3000:]}")
    # Gloo prints to stdout too: the JSON line is the last one that
    # starts with "{".
    lines = [
        [line for line in out.splitlines() if line.startswith("{")]
        for out, _ in outputs
    ]
    return [json.loads(found[-1]) if found else None for found in lines]


def main(mode):
    out = globals()[mode]()
    if out is not None:
        print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main(sys.argv[1])
