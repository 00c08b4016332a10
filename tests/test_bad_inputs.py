"""Bad inputs to `fit`, `evaluate` and `predict`: a clear error naming the
argument and the modality, raised before any training step; odd but valid
inputs (labels of shape `(n, 1)`, another sequence length) just work."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_olm
from keras_olm.synthetic import make_imbalanced

SHAPES = {"fast": (None, 16), "slow": (None, 64)}


@pytest.fixture(scope="module")
def data():
    x, y = make_imbalanced(64, seed=0)
    held_x, held_y = make_imbalanced(16, seed=1)
    return x, y, held_x, held_y


def np_(x):
    return keras.ops.convert_to_numpy(x)


def built_model(balancer="olm"):
    """A compiled model, built without training: a failed fit that runs no
    step leaves its optimizer at iteration 0."""
    model = keras_olm.BalancedMultimodalModel(
        {"fast": keras.layers.Dense(8), "slow": keras.layers.Dense(8)},
        num_classes=4,
        balancer=balancer,
    )
    model.build(SHAPES)
    model.compile(optimizer="adam")
    return model


def state(model):
    return [np_(v).copy() for v in model.balancer.non_trainable_weights]


def assert_no_step(model, before):
    assert int(np_(model.optimizer.iterations)) == 0
    for value, v in zip(before, model.balancer.non_trainable_weights):
        np.testing.assert_array_equal(np_(v), value, err_msg=v.path)


def dataset(x, y, batch_size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def with_nan(x):
    return {
        m: np.full_like(v, np.nan) if m == "slow" else v for m, v in x.items()
    }


class Batches(keras.utils.PyDataset):
    """`(inputs, labels)` batches of arrays, in order."""

    def __init__(self, x, y, batch_size=8):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {m: v[part] for m, v in self.x.items()}, self.y[part]


# --- held-out data --------------------------------------------------------


@pytest.mark.parametrize("form", ["arrays", "dataset", "py_dataset"])
def test_nan_held_out_data_stop_fit_before_a_step(data, form):
    x, y, held_x, held_y = data
    bad = with_nan(held_x)
    held_out = {
        "arrays": (bad, held_y),
        "dataset": dataset(bad, held_y),
        "py_dataset": Batches(bad, held_y),
    }[form]
    model = built_model()
    before = state(model)
    with pytest.raises(
        ValueError, match="held_out_data: modality 'slow' must be finite"
    ):
        model.fit(x, y, held_out_data=held_out, epochs=1, verbose=0)
    assert_no_step(model, before)


def test_nan_in_the_held_out_split_of_x_names_that_split(data):
    x, y, _, _ = data
    model = built_model()
    before = state(model)
    with pytest.raises(
        ValueError,
        match=r"held-out part of `x` \(held_out_split=0.5\): modality 'slow'",
    ):
        model.fit(with_nan(x), y, held_out_split=0.5, epochs=1, verbose=0)
    assert_no_step(model, before)


@pytest.mark.parametrize("form", ["arrays", "dataset", "filtered_dataset"])
def test_empty_held_out_data_stop_fit_before_a_step(data, form):
    x, y, held_x, held_y = data
    empty = {m: v[:0] for m, v in held_x.items()}
    held_out = {
        "arrays": (empty, held_y[:0]),
        "dataset": dataset(held_x, held_y).take(0),
        # Unknown cardinality: empty only as it turns out.
        "filtered_dataset": dataset(held_x, held_y).filter(lambda x, y: False),
    }[form]
    model = built_model()
    before = state(model)
    with pytest.raises(ValueError, match="held_out_data: .*no (samples|batch)"):
        model.fit(x, y, held_out_data=held_out, epochs=3, verbose=0)
    assert_no_step(model, before)


def test_held_out_labels_out_of_range_stop_fit_before_a_step(data):
    x, y, held_x, held_y = data
    bad_y = held_y.copy()
    bad_y[-1] = 7  # In the last batch.
    model = built_model()
    before = state(model)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"held_out_data: labels must lie in \[0, 4\)",
    ):
        model.fit(
            x, y, held_out_data=dataset(held_x, bad_y), epochs=1, verbose=0
        )
    assert_no_step(model, before)


def test_held_out_data_of_the_wrong_feature_size_name_the_modality(data):
    x, y, held_x, held_y = data
    bad = {**held_x, "fast": held_x["fast"][:, :10]}
    for held_out in ((bad, held_y), dataset(bad, held_y)):
        model = built_model()
        before = state(model)
        with pytest.raises(
            ValueError,
            match=r"held_out_data: modality 'fast' has inputs of shape "
            r"\((16|None), 10\), but the model was built for \(None, 16\)",
        ):
            model.fit(x, y, held_out_data=held_out, epochs=1, verbose=0)
        assert_no_step(model, before)


def test_held_out_dataset_that_repeats_forever_is_a_clear_error(data):
    x, y, held_x, held_y = data
    model = built_model()
    before = state(model)
    held_out = dataset(held_x, held_y).repeat()
    with pytest.raises(ValueError, match="held_out_data: .* repeats forever"):
        model.fit(x, y, held_out_data=held_out, epochs=1, verbose=0)
    assert_no_step(model, before)


# --- training inputs ------------------------------------------------------


@pytest.mark.parametrize(
    "bad_slow",
    [lambda v: v[:, :32], lambda v: v[:, :, None]],
    ids=["feature_size", "rank"],
)
def test_wrong_input_shape_names_the_modality(data, bad_slow):
    x, y, _, _ = data
    bad = {**x, "slow": bad_slow(x["slow"])}
    model = built_model("heads")
    before = state(model)
    match = r"modality 'slow' has inputs of shape \(64, (32|64, 1)\), but "
    with pytest.raises(ValueError, match="fit: " + match):
        model.fit(bad, y, epochs=1, verbose=0)
    with pytest.raises(
        ValueError, match="fit: " + match.replace("64", "None", 1)
    ):
        model.fit(dataset(bad, y), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="evaluate: " + match):
        model.evaluate(bad, y, verbose=0)
    with pytest.raises(ValueError, match="validation_data: " + match):
        model.fit(x, y, validation_data=(bad, y), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="predict: " + match):
        model.predict(bad, verbose=0)
    assert_no_step(model, before)


def test_another_sequence_length_passes_where_the_encoder_takes_it():
    encoder = keras.Sequential(
        [keras.layers.Dense(8), keras.layers.GlobalAveragePooling1D()]
    )
    model = keras_olm.BalancedMultimodalModel(
        {"text": encoder, "audio": keras.layers.Dense(8)},
        num_classes=3,
        balancer="heads",
    )
    model.build({"text": (None, 5, 4), "audio": (None, 6)})
    x = {"text": np.ones((2, 7, 4), "float32"), "audio": np.ones((2, 6))}
    assert model.predict(x, verbose=0).shape == (2, 3)
    x["text"] = np.ones((2, 7, 3), "float32")
    with pytest.raises(ValueError, match="predict: modality 'text'"):
        model.predict(x, verbose=0)


@pytest.mark.parametrize("key", [0, None, ""], ids=["int", "none", "empty"])
def test_modality_names_must_be_strings(key):
    with pytest.raises(TypeError, match=rf"keys of `encoders`.*got {key!r}"):
        keras_olm.BalancedMultimodalModel(
            {key: keras.layers.Dense(2), "b": keras.layers.Dense(2)},
            num_classes=2,
        )


@pytest.mark.parametrize("balancer", ["olm", "heads"])
def test_sample_weight_of_the_wrong_length(data, balancer):
    x, y, _, _ = data
    model = built_model(balancer)
    before = state(model)
    with pytest.raises(
        ValueError,
        match=r"fit: `sample_weight` must hold one weight per sample "
        r"\(64 samples\); got shape \(50,\)",
    ):
        model.fit(x, y, sample_weight=np.ones(50), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_data: `sample_weight`"):
        model.fit(x, y, validation_data=(x, y, np.ones(3)), epochs=1, verbose=0)
    assert_no_step(model, before)


def empty_data_loader():
    import torch

    class Empty(torch.utils.data.Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    return torch.utils.data.DataLoader(Empty(), batch_size=8)


@pytest.mark.parametrize(
    "form",
    ["arrays", "dataset", "filtered_dataset", "py_dataset", "data_loader"],
)
def test_empty_training_data_stop_fit(data, form):
    x, y, held_x, held_y = data
    empty_x = {m: v[:0] for m, v in x.items()}
    inputs = {
        "arrays": lambda: (empty_x, y[:0]),
        "dataset": lambda: (dataset(x, y).take(0), None),
        "filtered_dataset": lambda: (
            dataset(x, y).filter(lambda x, y: False),
            None,
        ),
        "py_dataset": lambda: (Batches(empty_x, y[:0]), None),
        # Checked before Keras reads it, so on every backend.
        "data_loader": lambda: (empty_data_loader(), None),
    }[form]()
    model = built_model()
    before = state(model)
    match = (
        "fit: the inputs hold no samples"
        if form == "arrays"
        else "fit: `x` yields no batches"
    )
    with pytest.raises(ValueError, match=match):
        model.fit(*inputs, held_out_data=(held_x, held_y), epochs=2, verbose=0)
    assert_no_step(model, before)


def test_labels_of_shape_n_1_after_labels_of_shape_n(data):
    x, y, held_x, held_y = data
    model = built_model()
    held_out = (held_x, held_y[:, None])
    fit = dict(epochs=1, batch_size=32, held_out_data=held_out, verbose=0)
    model.fit(x, y, **fit)
    model.fit(x, y[:, None], **fit)
    model.fit(dataset(x, y[:, None], 32), **fit)
    flat = model.evaluate(x, y, verbose=0)
    column = model.evaluate(x, y[:, None], verbose=0)
    from_dataset = model.evaluate(dataset(x, y[:, None], 32), verbose=0)
    np.testing.assert_allclose(column, flat, rtol=1e-5)
    np.testing.assert_allclose(from_dataset, flat, rtol=1e-5)
    assert int(np_(model.optimizer.iterations)) == 6


def test_dataset_labels_of_another_shape_are_a_clear_error(data):
    x, y, _, _ = data
    one_hot = np.eye(4, dtype="float32")[y]
    model = built_model("heads")
    with pytest.raises(
        ValueError, match=r"fit: labels must be integer class ids of shape"
    ):
        model.fit(dataset(x, one_hot), epochs=1, verbose=0)
