"""Shared helpers of the keras-olm tests (not a test module)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_olm


def tiny_encoder(units=16):
    return keras.Sequential([keras.layers.Dense(units, activation="relu")])


def tiny_model(balancer="olm", num_classes=4, fusion=None):
    return keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(), "slow": tiny_encoder()},
        num_classes=num_classes,
        fusion=fusion,
        balancer=balancer,
    )


def set_weights_from_numpy(model, seed=0, scale=0.3):
    """Gives every variable the same values on every backend."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=scale, size=v.shape).astype("float32"))


def deterministic_run(steps=6, epochs=2):
    """A few SGD steps from fixed weights and data; returns what OLM saw.

    A held-out batch every second step, counted across the epoch boundary,
    from a held-out set of two batches (so its stream wraps around).
    """
    x, y = keras_olm.synthetic.make_imbalanced(
        steps // epochs * 16, num_classes=3, seed=0
    )
    held_out_x, held_out_y = keras_olm.synthetic.make_imbalanced(
        32, num_classes=3, seed=1
    )
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(8), "slow": tiny_encoder(8)},
        num_classes=3,
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("periodic", 2),
            coefficient_law=keras_olm.balancers.ClosedForm(strength=-2.0),
            # Every head stops at the second held-out measurement (no
            # fall counts as 50 %): the last steps train with the gates shut.
            head_stopping=keras_olm.balancers.HeadStopping(
                patience=1, min_delta=0.5
            ),
        ),
    )
    model.build({"fast": (None, 16), "slow": (None, 64)})
    set_weights_from_numpy(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        shuffle=False,
        held_out_data=(held_out_x, held_out_y),
        verbose=0,
    )
    balancer = model.balancer
    stopping = balancer.head_stopping
    values = {
        name: getattr(balancer, name)
        for name in (
            "coefficients",
            "lambdas",
            "train_losses",
            "held_out_losses",
            "norms",
            "steps",
            "held_out_steps",
        )
    }
    values.update(stopping_losses=stopping.losses, stopped=stopping.stopped)
    out = {
        name: keras.ops.convert_to_numpy(value).tolist()
        for name, value in values.items()
    }
    out["history"] = {k: float(v[-1]) for k, v in history.history.items()}
    return out


def run_in_backend(backend, code):
    """Runs Python `code` under another backend; returns its JSON output."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{backend} run failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gradients(loss_fn, variables):
    """Gradient of `loss_fn()` w.r.t. `variables`, on any backend; a
    variable the loss does not reach gets zeros."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
    elif backend == "torch":
        import torch

        grads = torch.autograd.grad(
            loss_fn(), [v.value for v in variables], allow_unused=True
        )
    else:
        import jax

        def pure(values):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_fn()

        return jax.grad(pure)([v.value for v in variables])
    return [
        keras.ops.zeros(v.shape) if g is None else g
        for g, v in zip(grads, variables)
    ]
