"""Saved files across backends and balancers, and files that are damaged.

A `.keras` saved under any backend loads, predicts and trains under the
others; a weights file names the balancer that wrote it, and loading it
into a model with another balancer is an error naming both; a truncated
file is an error naming the file.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_olm
from tests.olm_testing import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")

SAVE_CODE = """
import json, sys
sys.path.insert(0, {root!r})
import keras, numpy as np
import keras_olm
from tests.olm_testing import tiny_model
x, y = keras_olm.synthetic.make_imbalanced(64, num_classes=4, seed=0)
keras.utils.set_random_seed(0)
model = tiny_model("olm")
model.compile(optimizer="adam")
model.fit(x, y, batch_size=16, epochs=1, verbose=0)
model.save({path!r})
print(json.dumps(model.predict(x, verbose=0).tolist()))
"""


def data():
    return keras_olm.synthetic.make_imbalanced(64, num_classes=4, seed=0)


def save_under(backend, path):
    """Saves a trained model under `backend` in a subprocess; returns its
    predictions on `data()`."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_CODE.format(root=ROOT, path=str(path))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} run failed:\n{proc.stderr[-3000:]}")
    return np.array(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("saved_under", BACKENDS)
def test_a_model_saved_under_another_backend_predicts_and_trains(
    saved_under, tmp_path
):
    if saved_under == keras.backend.backend():
        pytest.skip("the same backend")
    if importlib.util.find_spec(saved_under) is None:
        pytest.skip(f"{saved_under} is not installed")
    path = tmp_path / f"{saved_under}.keras"
    expected = save_under(saved_under, path)
    model = keras_olm.load_model(path)
    x, y = data()
    np.testing.assert_allclose(
        model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5
    )
    # The optimizer is this backend's own, with the saved moments.
    assert "backend" not in type(model.optimizer).__module__ or (
        keras.backend.backend() in type(model.optimizer).__module__
    )
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert steps == 4
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8


def test_the_compile_config_names_no_backend_class():
    model = tiny_model("heads")
    model.compile(optimizer=keras.optimizers.AdamW())
    config = json.dumps(model.get_compile_config())
    assert "keras.src.backend" not in config


def trained(balancer):
    keras.utils.set_random_seed(0)
    model = tiny_model(balancer)
    model.compile(optimizer="adam")
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model


def fresh(balancer):
    model = tiny_model(balancer)
    model.compile(optimizer="adam")
    model.build({"fast": (None, 16), "slow": (None, 64)})
    return model


@pytest.mark.parametrize(
    "saved, loaded, names",
    [
        ("olm", "heads", ("OLM", "Balancer")),
        ("heads", "olm", ("Balancer", "OLM")),
        ("olm", "pmr", ("OLM", "PMR")),
    ],
)
def test_loading_another_balancers_state_names_both(
    saved, loaded, names, tmp_path
):
    path = str(tmp_path / "run.weights.h5")
    trained(saved).save_weights(path)
    model = fresh(loaded)
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError) as info:
        model.load_weights(path)
    message = str(info.value)
    theirs, mine = names
    assert f"balancer {theirs} (keras_olm>{theirs})" in message
    assert f"balancer is {mine} (keras_olm>{mine})" in message
    assert "skip_mismatch=True" in message
    # Nothing was loaded.
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)


def test_skip_mismatch_loads_all_but_the_balancers_state(tmp_path):
    path = str(tmp_path / "run.weights.h5")
    source = trained("olm")
    source.save_weights(path)
    model = fresh("heads")
    with pytest.warns(UserWarning, match="OLM"):
        model.load_weights(path, skip_mismatch=True)
    for name in ("fast", "slow"):
        for a, b in zip(
            model.encoders[name].weights, source.encoders[name].weights
        ):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            )


def test_the_same_balancer_loads_its_state(tmp_path):
    path = str(tmp_path / "run.weights.h5")
    source = trained("olm")
    source.save_weights(path)
    model = fresh("olm")
    model.load_weights(path)
    for a, b in zip(model.balancer.weights, source.balancer.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )


def truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def test_a_truncated_keras_file_is_named_as_truncated(tmp_path):
    path = str(tmp_path / "run.keras")
    trained("heads").save(path)
    truncate(path)
    for load in (keras_olm.load_model, fresh("heads").load_weights):
        with pytest.raises(OSError, match="truncated or corrupt") as info:
            load(path)
        assert path in str(info.value)


def test_a_truncated_weights_file_is_named_as_truncated(tmp_path):
    path = str(tmp_path / "run.weights.h5")
    trained("heads").save_weights(path)
    truncate(path)
    with pytest.raises(OSError, match="truncated or corrupt") as info:
        fresh("heads").load_weights(path)
    assert path in str(info.value)
