"""`InputPlan` on its own: what each input form becomes, the announced
held-out split, and errors that name the argument and the modality."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_olm.balancers import OLM
from keras_olm.balancers import JointTraining
from keras_olm.held_out import FitInputs
from keras_olm.input_plan import FitPlan
from keras_olm.input_plan import InputPlan


def arrays(n=8):
    """Two modalities; sample i holds i in every entry, labels i % 3."""
    index = np.arange(n, dtype="float32")
    x = {
        "a": np.repeat(index[:, None], 4, axis=1),
        "b": np.repeat(index[:, None], 2, axis=1),
    }
    return x, np.arange(n) % 3


def plan(**kwargs):
    return InputPlan(["a", "b"], num_classes=3, **kwargs)


def for_fit(x, y=None, balancer=None, sample_weight=None, **kwargs):
    return plan().for_fit(
        FitInputs(x, y, sample_weight, None, True, None),
        balancer=balancer,
        **kwargs,
    )


class Batches(keras.utils.PyDataset):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        x, y = arrays(4)
        return x, y


def test_arrays_stay_arrays():
    x, y = arrays()
    p = for_fit(x, y[:, None])
    assert isinstance(p, FitPlan)
    assert p.fit_inputs.x is x  # the same dict: Keras' adapter shuffles it
    np.testing.assert_array_equal(p.fit_inputs.y, [0, 1, 2, 0, 1, 2, 0, 1])
    assert p.fit_inputs.y.shape == (8,)
    assert p.fit_inputs.shuffle is True
    assert p.build_shapes == {"a": (None, 4), "b": (None, 2)}
    assert p.held_out_for is None and p.held_out_data is None


def test_a_list_of_arrays_is_keyed_in_the_encoders_order():
    x, y = arrays()
    p = for_fit([x["a"], x["b"]], y)
    assert list(p.fit_inputs.x) == ["a", "b"]
    assert p.fit_inputs.x["a"] is x["a"] and p.fit_inputs.x["b"] is x["b"]
    with pytest.raises(
        ValueError,
        match=r"^fit: a list of inputs needs one array per modality, in the "
        r"encoders' order \['a', 'b'\]; got 3 arrays\.$",
    ):
        for_fit([x["a"], x["b"], x["b"]], y)


def test_validation_split_takes_the_last_samples_of_the_arrays():
    x, y = arrays(10)
    p = for_fit(x, y, validation_split=0.2)
    assert p.validation_split == 0.0  # split here, not by Keras
    (vx, vy, vsw) = p.validation_data
    np.testing.assert_array_equal(vx["a"][:, 0], [8, 9])
    np.testing.assert_array_equal(vy, [2, 0])
    assert vsw is None
    np.testing.assert_array_equal(p.fit_inputs.x["b"][:, 0], np.arange(8))


def test_the_announced_held_out_split(capsys):
    x, y = arrays(8)
    sw = np.arange(8, dtype="float32")
    p = for_fit(x, y, balancer=OLM(), sample_weight=sw, held_out_split=0.25)
    # default_rng(0).permutation(8) is [2 4 3 6 5 0 1 7]: samples 2 and 4
    # are held out, the other six trained on, each part in sample order.
    held_x, held_y, held_sw = p.held_out_data
    np.testing.assert_array_equal(held_x["a"][:, 0], [2, 4])
    np.testing.assert_array_equal(held_y, [2, 1])
    np.testing.assert_array_equal(held_sw, [2, 4])
    np.testing.assert_array_equal(p.fit_inputs.x["a"][:, 0], [0, 1, 3, 5, 6, 7])
    np.testing.assert_array_equal(
        p.fit_inputs.sample_weight, [0, 1, 3, 5, 6, 7]
    )
    assert p.held_out_for == "OLM"
    assert p.held_out_where == "the held-out part of `x` (held_out_split=0.25)"
    assert capsys.readouterr().out == (
        "OLM: held out 2 of the 8 training samples (held_out_split=0.25, "
        "seed 0) for its held-out losses; they are not trained on. Pass "
        "held_out_data= to choose them.\n"
    )
    p = plan().finish_fit(p)
    assert isinstance(p.held_out, tf.data.Dataset)
    batches = list(p.held_out.as_numpy_iterator())
    assert len(batches) == 1  # batch size min(32, 2)
    np.testing.assert_array_equal(batches[0][0]["b"][:, 0], [2, 4])
    np.testing.assert_array_equal(batches[0][1], [2, 1])


def test_the_split_is_quiet_with_verbose_0_and_follows_the_seed(capsys):
    x, y = arrays(10)
    p = for_fit(
        x, y, balancer=OLM(), held_out_split=0.2, held_out_seed=0, verbose=0
    )
    assert capsys.readouterr().out == ""
    # default_rng(0).permutation(10) starts [4 6 ...].
    np.testing.assert_array_equal(p.held_out_data[0]["a"][:, 0], [4, 6])
    with pytest.raises(
        ValueError,
        match=r"^held_out_split=0\.01 leaves 0 of 10 samples for the held-out",
    ):
        for_fit(x, y, balancer=OLM(), held_out_split=0.01, verbose=0)


def test_a_balancer_without_held_out_losses_splits_nothing():
    x, y = arrays(8)
    p = plan().finish_fit(for_fit(x, y, balancer=JointTraining()))
    assert p.held_out is None
    assert len(p.fit_inputs.y) == 8


def test_a_dataset_gets_checks_and_flat_labels():
    x, y = arrays(8)
    ds = tf.data.Dataset.from_tensor_slices((x, y[:, None])).batch(4)
    p = for_fit(ds)
    assert isinstance(p.fit_inputs.x, tf.data.Dataset)
    assert p.fit_inputs.x is not ds
    assert p.fit_inputs.shuffle is False  # Keras ignores it for datasets
    assert p.build_shapes == {"a": (None, 4), "b": (None, 2)}
    labels = [b[1] for b in p.fit_inputs.x.as_numpy_iterator()]
    assert [v.shape for v in labels] == [(4,), (4,)]
    with pytest.raises(
        ValueError,
        match=r"^fit: with a dataset, labels and sample weights come from "
        r"the dataset; do not pass `y` or `sample_weight`\.$",
    ):
        for_fit(ds, y)


def same_batches(got, expected):
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert sorted(gx) == sorted(ex)
        for m in ex:
            np.testing.assert_array_equal(np.asarray(gx[m]), ex[m])
        np.testing.assert_array_equal(np.asarray(gy), ey)


def test_other_forms_go_to_keras_in_their_form_with_checked_batches():
    batches = Batches(2)
    p = for_fit(batches)
    assert isinstance(p.fit_inputs.x, keras.utils.PyDataset)
    assert p.fit_inputs.x.num_batches == 2
    same_batches(list(p.fit_inputs.x), list(batches))
    assert p.fit_inputs.shuffle is True  # Keras shuffles a PyDataset
    assert p.build_shapes is None  # Keras builds from the first batch

    def generator():
        yield arrays(4)

    g = generator()
    p = for_fit(g)
    assert isinstance(p.fit_inputs.x, types.GeneratorType)
    assert p.fit_inputs.shuffle is False
    same_batches(list(p.fit_inputs.x), [arrays(4)])
    with pytest.raises(ValueError, match=r"^fit: `x` yields no batches\.$"):
        for_fit(Batches(0))


def test_a_torch_dataloader_goes_to_keras_with_checked_batches():
    torch = pytest.importorskip("torch")
    x, y = arrays(8)
    loader = torch.utils.data.DataLoader(
        [({"a": x["a"][i], "b": x["b"][i]}, y[i]) for i in range(8)],
        batch_size=4,
    )
    p = for_fit(loader)
    assert isinstance(p.fit_inputs.x, torch.utils.data.DataLoader)
    assert len(p.fit_inputs.x) == 2 and p.fit_inputs.shuffle is False
    same_batches(list(p.fit_inputs.x), [(b[0], b[1]) for b in loader])
    assert p.build_shapes is None


def test_held_out_data_in_every_form():
    x, y = arrays(8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    for data in [(x, y), ([x["a"], x["b"]], y), ds, Batches(2)]:
        p = plan().finish_fit(
            for_fit(x, y, balancer=OLM(), held_out_data=data, verbose=0)
        )
        assert len(p.fit_inputs.y) == 8  # nothing split off the arrays
        first = next(p.held_out.as_numpy_iterator())
        assert sorted(first[0]) == ["a", "b"]


def test_bad_inputs_name_the_argument_and_the_modality():
    x, y = arrays(8)
    with pytest.raises(
        ValueError,
        match=r"^fit: the input dict must have exactly the encoders' keys "
        r"\['a', 'b'\]; missing modalities \['b'\]\.$",
    ):
        for_fit({"a": x["a"]}, y)
    with pytest.raises(
        ValueError,
        match=r"^fit: labels must lie in \[0, 3\); sample 2 has label 5 ",
    ):
        for_fit(x, np.array([0, 1, 5, 0, 1, 2, 0, 1]))
    with pytest.raises(
        ValueError, match=r"^fit: labels `y` are required with arrays\.$"
    ):
        for_fit(x)
    bad = dict(x, b=x["b"].copy())
    bad["b"][3, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=r"^held_out_data: modality 'b' must be finite; sample 3 holds "
        r"NaN or inf \(1 such samples in all\)\.$",
    ):
        plan().finish_fit(
            for_fit(x, y, balancer=OLM(), held_out_data=(bad, y), verbose=0)
        )
    with pytest.raises(
        ValueError,
        match=r"^validation_data: every modality \(and the labels\) must "
        r"have the same number of samples",
    ):
        plan().finish_fit(for_fit(x, y, validation_data=(x, y[:5])))
    with pytest.raises(
        ValueError,
        match=r"^OLM measures losses on held-out training data: pass fit",
    ):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        plan().finish_fit(for_fit(ds, balancer=OLM()))


def test_the_shape_check_asks_the_encoder():
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    p = InputPlan(
        ["a", "b"],
        num_classes=3,
        encoders={"a": encoder, "b": encoder},
        built_shapes=lambda: {"a": (None, 4), "b": (None, 2)},
    )
    x, y = arrays(8)
    p.for_evaluate(x, y)  # the built shapes
    with pytest.raises(
        ValueError,
        match=r"^predict: modality 'a' has inputs of shape \(8, 5\), but the "
        r"model was built for \(None, 4\) and the encoder of 'a' does not "
        r"take them: ",
    ):
        p.for_predict(dict(x, a=np.zeros((8, 5), "float32")))
    assert InputPlan(["a", "b"], 3).for_predict(x) is x  # never built


def test_predict_and_evaluate_inputs():
    x, y = arrays(8)
    p = plan()
    assert p.for_predict([x["a"], x["b"]]) == x
    with pytest.raises(
        ValueError,
        match=r"^inputs: every modality must have the same batch size; got "
        r"\{'a': 8, 'b': 5\}\.$",
    ):
        p.for_predict(dict(x, b=x["b"][:5]))
    ex, ey = p.for_evaluate([x["a"], x["b"]], y[:, None])
    assert ex == x and ey.shape == (8,)


def test_regression_targets():
    p = plan(regression_targets=["v"])
    assert p.regression_targets == {"v": 1}
    x, y = arrays(4)
    _, targets = p.for_evaluate(x, {"label": y, "v": [1, 2, 3, 4]})
    assert sorted(targets) == ["label", "v"]
    assert targets["v"].shape == (4, 1) and targets["v"].dtype == np.float32
    with pytest.raises(
        ValueError,
        match=r"^evaluate: the targets must be a dict with exactly the keys "
        r"\['label', 'v'\] .*; missing targets \['v'\]\.$",
    ):
        p.for_evaluate(x, {"label": y})
    with pytest.raises(ValueError, match=r"^'label' holds the class labels"):
        plan(regression_targets=["label"])
