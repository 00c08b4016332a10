"""What `fit` logs: each key once, as the README's table documents it."""

import os
import re

import keras
import numpy as np
import pytest

import keras_olm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(balancer):
    encoders = {
        m: keras.Sequential([keras.layers.Dense(8, activation="relu")])
        for m in ("fast", "slow")
    }
    return keras_olm.BalancedMultimodalModel(encoders, 4, balancer=balancer)


@pytest.fixture(scope="module")
def data():
    return (
        keras_olm.synthetic.make_imbalanced(256, seed=0),
        keras_olm.synthetic.make_imbalanced(64, seed=1),
    )


def fit(balancer, data, **compile_args):
    (x, y), held_out = data
    model = tiny_model(balancer)
    model.compile(optimizer="adam", **compile_args)
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=64,
        held_out_data=held_out,
        validation_data=held_out,
        verbose=0,
    )
    return model, history.history


def _readme_log_keys():
    """The key patterns of the README's table of logs, as regexes."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("| key | meaning | when |")
    rows = text[start:].split("\n\n")[0].splitlines()[2:]
    patterns = []
    for row in rows:
        for key in re.findall(r"`([^`]+)`", row.split("|")[1]):
            patterns.append(re.sub(r"<[a-z]+>", "[a-z]+", re.escape(key)))
    return patterns


def test_every_logged_key_is_documented_and_none_repeats(data):
    patterns = _readme_log_keys()
    assert any("gate" in p for p in patterns)
    for balancer in ("olm", None):
        _, logs = fit(balancer, data)
        # Nothing the library adds repeats another key: no `accuracy`
        # beside `fused_acc` unless compiled.
        assert "accuracy" not in logs
        for key in logs:
            name = key[len("val_") :] if key.startswith("val_") else key
            assert any(re.fullmatch(p, name) for p in patterns), key
    _, logs = fit("olm", data)
    assert "fast_gate" in logs and "slow_gate" in logs


def test_compiled_accuracy_is_the_fused_accuracy(data):
    _, logs = fit("olm", data, metrics=["accuracy"])
    np.testing.assert_allclose(logs["accuracy"], logs["fused_acc"], atol=1e-6)


def test_joint_training_logs_the_loss_it_minimises(data):
    model, logs = fit(None, data)
    # Equal batches: the epoch means add up as the per-batch losses do.
    for prefix in ("", "val_"):
        total = sum(
            np.asarray(logs[f"{prefix}{h}_loss"]) for h in model.head_names
        )
        np.testing.assert_allclose(logs[f"{prefix}loss"], total, rtol=1e-5)
        assert np.all(
            np.asarray(logs[f"{prefix}loss"])
            > np.asarray(logs[f"{prefix}fused_loss"])
        )
