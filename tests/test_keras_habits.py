"""What a Keras user does with a `keras.Model` works with ours: input forms,
`validation_split`, `class_weight`, `initial_epoch`, `evaluate`, `predict`,
the progress bar's logs."""

import keras
import numpy as np
import pytest
from olm_testing import set_weights_from_numpy
from olm_testing import tiny_model

import keras_olm
from keras_olm.synthetic import make_imbalanced


@pytest.fixture(scope="module")
def data():
    return make_imbalanced(200, seed=0)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def fitted(balancer="heads", seed=0, **fit_kwargs):
    """A tiny model from fixed weights after one SGD fit."""
    model = tiny_model(balancer=balancer)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    set_weights_from_numpy(model, seed)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    history = model.fit(verbose=0, **fit_kwargs)
    return model, history


def weights(model):
    return [np_(v) for v in model.trainable_variables]


class Batches(keras.utils.PyDataset):
    """`(inputs, labels)` batches of arrays, in order."""

    def __init__(self, x, y, batch_size=32, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {m: v[part] for m, v in self.x.items()}, self.y[part]


def test_validation_split_holds_out_the_last_fraction(data):
    x, y = data
    model, history = fitted(
        x=x, y=y, epochs=2, batch_size=32, validation_split=0.15
    )
    assert len(history.history["val_loss"]) == 2
    assert "val_fused_acc" in history.history
    # As Keras: the last 15% (30 samples), before shuffling.
    tail = {m: v[170:] for m, v in x.items()}
    scores = model.evaluate(tail, y[170:], verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(
        scores["loss"], rel=1e-4
    )
    assert history.history["val_fused_acc"][-1] == pytest.approx(
        scores["fused_acc"], abs=1e-6
    )


def test_a_list_of_arrays_in_the_encoders_order_is_a_dict(data):
    x, y = data
    by_dict, _ = fitted(x=x, y=y, shuffle=False, batch_size=50)
    by_list, _ = fitted(
        x=[x["fast"], x["slow"]], y=y, shuffle=False, batch_size=50
    )
    for a, b in zip(weights(by_dict), weights(by_list)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    probs = by_list.predict([x["fast"], x["slow"]], verbose=0)
    np.testing.assert_allclose(probs, by_dict.predict(x, verbose=0))
    with pytest.raises(ValueError, match="one array per modality"):
        by_list.predict([x["fast"]], verbose=0)


def test_a_py_dataset_and_a_generator_train_like_arrays(data):
    x, y = data
    by_arrays, _ = fitted(x=x, y=y, shuffle=False, batch_size=40)
    by_py_dataset, history = fitted(x=Batches(x, y, 40), shuffle=False)
    assert len(history.history["loss"]) == 1

    def generator():
        for i in range(5):
            yield (
                {m: v[i * 40 : (i + 1) * 40] for m, v in x.items()},
                y[i * 40 : (i + 1) * 40],
            )

    by_generator, _ = fitted(x=generator(), steps_per_epoch=5, shuffle=False)
    for other in (by_py_dataset, by_generator):
        for a, b in zip(weights(by_arrays), weights(other)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_torch_data_loader_trains(data):
    if keras.backend.backend() != "torch":
        pytest.skip("torch DataLoader inputs are for the torch backend")
    import torch

    x, y = data

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {m: v[i] for m, v in x.items()}, y[i]

    loader = torch.utils.data.DataLoader(Samples(), batch_size=40)
    by_arrays, _ = fitted(x=x, y=y, shuffle=False, batch_size=40)
    by_loader, history = fitted(x=loader, shuffle=False)
    assert len(history.history["loss"]) == 1
    for a, b in zip(weights(by_arrays), weights(by_loader)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_class_weight_is_a_per_sample_weight(data):
    x, y = data
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0, 3: 1.5}
    by_class, _ = fitted(
        x=x, y=y, shuffle=False, batch_size=50, class_weight=class_weight
    )
    by_sample, _ = fitted(
        x=x,
        y=y,
        shuffle=False,
        batch_size=50,
        sample_weight=np.array([class_weight[int(c)] for c in y]),
    )
    plain, _ = fitted(x=x, y=y, shuffle=False, batch_size=50)
    for a, b in zip(weights(by_class), weights(by_sample)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weights(by_class)[0], weights(plain)[0])


def test_initial_epoch_starts_there(data):
    x, y = data
    _, history = fitted(x=x, y=y, epochs=3, initial_epoch=2)
    assert history.epoch == [2]


def test_the_olm_held_out_split_is_announced(data, capsys):
    x, y = data
    model = tiny_model()
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=32, verbose=2)
    out = capsys.readouterr().out
    assert "held out 20 of the 200 training samples" in out
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert "held out" not in capsys.readouterr().out


def test_held_out_data_from_a_py_dataset(data):
    x, y = data
    held_out_x, held_out_y = make_imbalanced(64, seed=1)
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("step")
        )
    )
    model.compile(optimizer="adam")
    model.fit(
        x,
        y,
        epochs=1,
        batch_size=50,
        held_out_data=Batches(held_out_x, held_out_y, 32),
        verbose=0,
    )
    # 4 steps, a held-out batch each, cycling through the two batches.
    assert int(np_(model.balancer.held_out_steps)) == 4


def test_evaluate_returns_what_metrics_names_says(data):
    x, y = data
    model, _ = fitted(balancer="olm", x=x, y=y)
    values = model.evaluate(x, y, verbose=0)
    by_name = model.evaluate(x, y, verbose=0, return_dict=True)
    assert len(values) == len(model.metrics_names) == len(by_name)
    assert not any(k.endswith(("_coef", "_lambda")) for k in by_name)


def test_predict_heads_takes_predicts_arguments(data):
    x, _ = data
    model = tiny_model()
    full = model.predict_heads(x, batch_size=64, verbose=0)
    part = model.predict_heads(
        [x["fast"], x["slow"]], batch_size=64, steps=2, verbose=0
    )
    assert list(part) == ["fast", "slow", "fused"]
    assert part["fused"].shape == (128, 4)
    np.testing.assert_allclose(part["fused"], full["fused"][:128], rtol=1e-5)


def test_logs_lead_with_the_loss_and_the_fused_head(data):
    x, y = data
    seen = []

    class Keys(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(list(logs))

    model = tiny_model()
    model.compile(optimizer="adam", metrics=["accuracy"])
    history = model.fit(
        x,
        y,
        epochs=1,
        batch_size=64,
        validation_data=(x, y),
        callbacks=[Keys()],
        verbose=0,
    )
    keys = seen[-1]
    assert keys[:4] == ["loss", "accuracy", "fused_loss", "fused_acc"]
    assert keys.index("fast_loss") < keys.index("fast_coef")
    # OLM's state is logged once, not again as validation figures.
    assert "fused_coef" in history.history
    assert not [k for k in history.history if k.startswith("val_fused_c")]
    assert "val_fused_acc" in history.history


def test_tensorflow_gets_no_gpu_unless_it_is_the_backend(monkeypatch):
    import tensorflow as tf

    from keras_olm import _devices

    calls = []
    monkeypatch.setattr(
        tf.config, "set_visible_devices", lambda *a: calls.append(a)
    )
    assert _devices.hide_gpus_from_tensorflow("jax")
    assert _devices.hide_gpus_from_tensorflow("torch")
    assert not _devices.hide_gpus_from_tensorflow("tensorflow")
    assert calls == [([], "GPU"), ([], "GPU")]
    if keras.backend.backend() != "tensorflow":
        assert tf.config.get_visible_devices("GPU") == []
