"""Every input form is checked as strictly as arrays: labels are integer
class ids in range, sample weights finite and non-negative, modalities of
one batch size, evaluation, validation and held-out inputs finite, held-out
data that never end an error; with one error text on every backend that
names the argument, the modality or the labels, and the batch."""

import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_olm
from keras_olm import input_plan
from keras_olm.batch_checks import BatchError
from keras_olm.synthetic import make_imbalanced

SHAPES = {"fast": (None, 16), "slow": (None, 64)}
FORMS = ["dataset", "py_dataset", "generator", "data_loader"]


@pytest.fixture(scope="module")
def data():
    x, y = make_imbalanced(64, seed=0)
    held_x, held_y = make_imbalanced(16, seed=1)
    return x, y, held_x, held_y


def np_(x):
    return keras.ops.convert_to_numpy(x)


def built_model(balancer="heads"):
    model = keras_olm.BalancedMultimodalModel(
        {"fast": keras.layers.Dense(8), "slow": keras.layers.Dense(8)},
        num_classes=4,
        balancer=balancer,
    )
    model.build(SHAPES)
    model.compile(optimizer="adam")
    return model


def assert_no_step(model):
    assert int(np_(model.optimizer.iterations)) == 0
    assert int(np_(model.training_state.steps)) == 0


def exactly(message):
    return "^" + re.escape(message) + "$"


def split(x, y, sw=None, batch_size=8):
    """`(inputs, labels[, sample_weight])` batches of arrays."""
    n = len(y)
    batches = []
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        batch = ({m: v[part] for m, v in x.items()}, y[part])
        if sw is not None:
            batch += (sw[part],)
        batches.append(batch)
    return batches


class Batches(keras.utils.PyDataset):
    """A list of batches as a `PyDataset`."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


class LaterPasses(keras.utils.PyDataset):
    """Finite batches for the first `finite_reads` reads, then the same
    batches with NaN in modality 'slow'."""

    def __init__(self, batches, finite_reads):
        super().__init__()
        self.batches = batches
        self.finite_reads = finite_reads
        self.reads = 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        self.reads += 1
        x, y = self.batches[i]
        if self.reads > self.finite_reads:
            x = {**x, "slow": np.full_like(x["slow"], np.nan)}
        return x, y


def data_loader(batches):
    torch = pytest.importorskip("torch")

    class Listed(torch.utils.data.Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    # Batched already: one element of the dataset is one batch (as
    # torch tensors).
    return torch.utils.data.DataLoader(Listed(), batch_size=None)


def as_form(form, batches):
    """`batches` (a list of `(x, y[, sw])` tuples of arrays) in `form`."""
    if form == "dataset":
        first = batches[0]
        signature = tf.nest.map_structure(
            lambda v: tf.TensorSpec((None, *np.shape(v)[1:]), v.dtype), first
        )
        return tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=signature
        )
    if form == "py_dataset":
        return Batches(batches)
    if form == "generator":
        return (b for b in batches)
    if form == "data_loader":
        return data_loader(batches)
    raise ValueError(form)


# --- 1. float labels ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_float_labels_are_an_error_not_truncated(data, form):
    x, y, _, _ = data
    labels = y.astype("float32")
    labels[11] = 2.5  # batch 1
    model = built_model()
    with pytest.raises(
        BatchError,
        match=exactly(
            "fit: labels must be integer class ids; batch 1 holds the label "
            "2.5."
        ),
    ):
        model.fit(
            as_form(form, split(x, labels)), epochs=1, verbose=0, shuffle=False
        )
    assert int(np_(model.training_state.steps)) <= 1


@pytest.mark.parametrize("form", FORMS)
def test_integer_valued_float_labels_train(data, form):
    x, y, _, _ = data
    model = built_model()
    model.fit(as_form(form, split(x, y.astype("float32"))), verbose=0)
    assert int(np_(model.training_state.steps)) == 8


# --- 2. labels out of range --------------------------------------------------


OUT_OF_RANGE = "labels must lie in [0, 4); batch 0 holds the label {}."
NOT_INTEGER = "labels must be integer class ids; batch 0 holds the label {}."


@pytest.mark.parametrize(
    "form, label, message",
    [
        ("py_dataset", 7, OUT_OF_RANGE.format(7)),
        ("py_dataset", -1, OUT_OF_RANGE.format(-1)),
        ("py_dataset", np.nan, NOT_INTEGER.format("nan")),
        ("generator", 7, OUT_OF_RANGE.format(7)),
        ("generator", -1, OUT_OF_RANGE.format(-1)),
        ("generator", np.nan, NOT_INTEGER.format("nan")),
        ("data_loader", 7, OUT_OF_RANGE.format(7)),
        ("dataset", np.nan, NOT_INTEGER.format("nan")),
        ("dataset", np.inf, NOT_INTEGER.format("inf")),
    ],
)
def test_labels_out_of_range_are_an_error(data, form, label, message):
    x, y, _, _ = data
    labels = y.astype("float32")
    labels[3] = label
    model = built_model()
    with pytest.raises(BatchError, match=exactly("fit: " + message)):
        model.fit(
            as_form(form, split(x, labels)), epochs=1, verbose=0, shuffle=False
        )
    assert_no_step(model)


# --- 3. held-out data that never end -----------------------------------------


@pytest.mark.parametrize("form", ["filtered_repeat", "endless_generator"])
def test_endless_held_out_data_are_an_error_not_a_hang(data, form, monkeypatch):
    x, y, held_x, held_y = data
    monkeypatch.setattr(input_plan, "MAX_HELD_OUT_BATCHES", 20)
    batches = split(held_x, held_y)
    if form == "filtered_repeat":
        held_out = (
            as_form("dataset", batches).repeat().filter(lambda x, y: True)
        )
    else:

        def endless():
            while True:
                yield from batches

        held_out = endless()
    model = built_model("olm")
    with pytest.raises(
        ValueError,
        match=r"^held_out_data: the data hold more than 20 batches and their "
        r"length is unknown: they seem to repeat forever",
    ):
        model.fit(x, y, held_out_data=held_out, epochs=1, verbose=0)
    assert_no_step(model)


def test_held_out_data_of_unknown_length_under_the_bound_train(data):
    x, y, held_x, held_y = data
    held_out = as_form("dataset", split(held_x, held_y)).filter(
        lambda x, y: True
    )
    model = built_model("olm")
    model.fit(x, y, held_out_data=held_out, epochs=1, verbose=0)
    assert int(np_(model.training_state.steps)) == 2


# --- 4. NaN in validation and evaluation inputs ------------------------------


def with_nan_in_batch_1(x):
    bad = {m: v.copy() for m, v in x.items()}
    bad["slow"][12, 3] = np.nan
    return bad


@pytest.mark.parametrize("form", ["arrays", *FORMS])
def test_nan_in_validation_data_is_an_error(data, form):
    x, y, _, _ = data
    bad = with_nan_in_batch_1(x)
    model = built_model()
    if form == "arrays":
        validation = (bad, y)
        message = (
            "validation_data: modality 'slow' must be finite; sample 12 "
            "holds NaN or inf (1 such samples in all)."
        )
    else:
        validation = as_form(form, split(bad, y))
        message = (
            "validation_data: modality 'slow' must be finite; batch 1 holds "
            "NaN or inf."
        )
    with pytest.raises(ValueError, match=exactly(message)):
        model.fit(x, y, validation_data=validation, batch_size=8, verbose=0)


@pytest.mark.parametrize("form", ["arrays", *FORMS])
def test_nan_in_evaluate_inputs_is_an_error(data, form):
    x, y, _, _ = data
    bad = with_nan_in_batch_1(x)
    model = built_model()
    if form == "arrays":
        args = (bad, y)
        message = (
            "evaluate: modality 'slow' must be finite; sample 12 holds NaN "
            "or inf (1 such samples in all)."
        )
    else:
        args = (as_form(form, split(bad, y)),)
        message = (
            "evaluate: modality 'slow' must be finite; batch 1 holds NaN or "
            "inf."
        )
    with pytest.raises(ValueError, match=exactly(message)):
        model.evaluate(*args, verbose=0)


@pytest.mark.parametrize("form", ["arrays", *FORMS])
def test_finite_evaluation_inputs_give_finite_metrics(data, form):
    x, y, _, _ = data
    model = built_model()
    args = (x, y) if form == "arrays" else (as_form(form, split(x, y)),)
    logs = model.evaluate(*args, verbose=0, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs


# --- 5. held-out data that turn bad on a later pass --------------------------


def test_nan_in_a_later_pass_of_held_out_data_stops_fit(data):
    """The pass before the first step reads finite batches; the next pass
    holds NaN: `fit` stops before any step reads it, on every backend."""
    x, y, held_x, held_y = data
    batches = split(held_x, held_y)
    # Read before the first step: the adapter's peek and the check pass.
    probe = LaterPasses(batches, finite_reads=10**9)
    built_model("olm").fit(x, y, held_out_data=probe, epochs=1, verbose=0)
    reads_before_training = probe.reads - 2  # 2 held-out batches trained
    model = built_model("olm")
    held_out = LaterPasses(batches, finite_reads=reads_before_training)
    with pytest.raises(
        BatchError,
        match=exactly(
            "held_out_data: modality 'slow' must be finite; batch 0 holds "
            "NaN or inf."
        ),
    ):
        model.fit(x, y, held_out_data=held_out, epochs=2, verbose=0)
    assert int(np_(model.training_state.steps)) == 0
    for v in model.weights:
        assert np.all(np.isfinite(np_(v))), v.path


# --- 6. batch sizes, sample weights, string labels ---------------------------


@pytest.mark.parametrize("form", FORMS)
def test_modalities_of_another_batch_size_name_the_sizes(data, form):
    x, y, _, _ = data
    batches = split(x, y)
    first_x, first_y = batches[0]
    batches[0] = ({**first_x, "slow": first_x["slow"][:6]}, first_y)
    model = built_model()
    with pytest.raises(
        BatchError,
        match=exactly(
            "fit: every modality (and the labels) must have the same batch "
            "size; batch 0 has {'fast': 8, 'slow': 6, 'labels': 8}."
        ),
    ):
        model.fit(as_form(form, batches), epochs=1, verbose=0, shuffle=False)
    assert_no_step(model)


@pytest.mark.parametrize("form", ["py_dataset", "generator"])
def test_predict_names_modalities_of_another_batch_size(data, form):
    x, y, _, _ = data
    batches = [b[0] for b in split(x, y)]
    batches[1] = {**batches[1], "fast": batches[1]["fast"][:5]}
    data_in = Batches(batches) if form == "py_dataset" else iter(batches)
    if form == "generator":
        data_in = (b for b in batches)
    model = built_model()
    with pytest.raises(
        BatchError,
        match=exactly(
            "predict: every modality (and the labels) must have the same "
            "batch size; batch 1 has {'fast': 5, 'slow': 8}."
        ),
    ):
        model.predict(data_in, verbose=0)


@pytest.mark.parametrize(
    "form, weight",
    [
        ("arrays", np.nan),
        ("arrays", -1.0),
        ("dataset", np.nan),
        ("dataset", -1.0),
        ("py_dataset", np.nan),
        ("generator", -1.0),
        ("data_loader", np.nan),
    ],
)
def test_bad_sample_weights_are_named(data, form, weight):
    x, y, _, _ = data
    sw = np.ones(len(y), "float32")
    sw[10] = weight
    model = built_model()
    text = "nan" if np.isnan(weight) else "-1"
    if form == "arrays":
        with pytest.raises(
            ValueError,
            match=exactly(
                "fit: `sample_weight` must be finite and non-negative; "
                f"sample 10 has weight [{weight}] (1 such samples in all)."
            ),
        ):
            model.fit(x, y, sample_weight=sw, verbose=0)
    else:
        with pytest.raises(
            BatchError,
            match=exactly(
                "fit: sample weights must be finite and non-negative; batch "
                f"1 holds the weight {text}."
            ),
        ):
            model.fit(as_form(form, split(x, y, sw)), verbose=0, shuffle=False)
    assert int(np_(model.training_state.steps)) <= 1
    assert np.isfinite(model.evaluate(x, y, batch_size=8, verbose=0)[0]), (
        "a bad weight was trained on"
    )


def test_bad_sample_weights_in_validation_and_evaluate(data):
    x, y, _, _ = data
    sw = np.ones(len(y), "float32")
    sw[3] = -2.0
    model = built_model()
    with pytest.raises(
        ValueError,
        match=r"^validation_data: `sample_weight` must be finite and "
        r"non-negative; sample 3 has weight \[-2\.0\]",
    ):
        model.fit(x, y, validation_data=(x, y, sw), verbose=0)
    with pytest.raises(
        ValueError,
        match=r"^evaluate: `sample_weight` must be finite and non-negative",
    ):
        model.evaluate(x, y, sample_weight=sw, verbose=0)
    assert_no_step(model)


@pytest.mark.parametrize("form", ["arrays", "dataset", "py_dataset"])
def test_string_labels_are_a_clear_error(data, form):
    x, y, _, _ = data
    labels = np.array([str(v) for v in y])
    model = built_model()
    if form == "arrays":
        args, dtype = (x, labels), "<U1"
    elif form == "dataset":
        ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
        args, dtype = (ds,), "string"
    else:
        args, dtype = (Batches(split(x, labels)),), "<U1"
    with pytest.raises(
        ValueError,
        match=exactly(
            f"fit: labels must be integer class ids; got dtype {dtype}."
        ),
    ):
        model.fit(*args, epochs=1, verbose=0)
    assert_no_step(model)


# --- the checks themselves ----------------------------------------------------


def test_batch_error_is_a_value_error_and_a_tf_error():
    error = BatchError("fit: labels must lie in [0, 4); batch 0 holds 7.")
    assert isinstance(error, ValueError)
    assert isinstance(error, tf.errors.InvalidArgumentError)
    assert str(error) == "fit: labels must lie in [0, 4); batch 0 holds 7."


def test_checked_forms_keep_their_form(data):
    x, y, _, _ = data
    plan = built_model().input_plan
    check = plan.batch_check("fit")
    from keras_olm.batch_checks import checked

    batches = split(x, y)
    assert isinstance(checked(Batches(batches), check), keras.utils.PyDataset)
    assert isinstance(checked((b for b in batches), check), types.GeneratorType)
