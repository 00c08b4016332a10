"""`keras_olm.compare_balancers`: balancers side by side on one's own data."""

import keras
import numpy as np
import pytest

import keras_olm
from keras_olm.comparison import BestCheckpoint

NUM_CLASSES = 4


def _data():
    x, y = keras_olm.synthetic.make_imbalanced(240, seed=0)
    test = keras_olm.synthetic.make_imbalanced(80, seed=1)
    return x, y, test


def _builder(x):
    def build(balancer):
        encoders = {
            m: keras.Sequential([keras.layers.Dense(8, activation="relu")])
            for m in x
        }
        return keras_olm.BalancedMultimodalModel(
            encoders, NUM_CLASSES, balancer=balancer
        )

    return build


class StepsSeen(keras.callbacks.Callback):
    """Records the training steps per epoch of every run."""

    steps = []

    def on_train_begin(self, logs=None):
        StepsSeen.steps.append(self.params["steps"])


def test_table_means_spreads_and_paired_differences():
    x, y, test = _data()
    StepsSeen.steps = []
    result = keras_olm.compare_balancers(
        _builder(x),
        x,
        y,
        balancers=["joint", "heads", "gblend"],
        test_data=test,
        seeds=(0, 1),
        epochs=2,
        fit_kwargs={"callbacks": [StepsSeen()]},
        verbose=0,
    )
    runs, table = result.runs, result.table
    assert list(table.index) == ["joint", "heads", "gblend"]
    assert len(runs) == 6 and set(runs["seed"]) == {0, 1}
    assert result.scored_on == "test" and result.reference == "joint"
    # 240 samples: 36 for validation, then G-Blend's held-out split (20)
    # is cut for every balancer, so each trains on the same 184 samples.
    assert StepsSeen.steps == [6] * 6  # ceil(184 / 32)
    for name in table.index:
        mine = runs[runs["balancer"] == name].set_index("seed")
        ref = runs[runs["balancer"] == "joint"].set_index("seed")
        acc = mine["test_accuracy"].to_numpy()
        diff = acc - ref["test_accuracy"].to_numpy()
        assert table.loc[name, "accuracy"] == pytest.approx(acc.mean())
        assert table.loc[name, "accuracy_std"] == pytest.approx(acc.std())
        assert table.loc[name, "vs_joint"] == pytest.approx(diff.mean())
        assert table.loc[name, "vs_joint_std"] == pytest.approx(diff.std())
        assert table.loc[name, "wins"] == f"{int((diff > 0).sum())}/2"
    assert table.loc["joint", "vs_joint"] == 0.0
    for (name, seed), probs in result.probabilities.items():
        assert probs.shape == (80, NUM_CLASSES)
        row = runs[(runs["balancer"] == name) & (runs["seed"] == seed)]
        accuracy = np.mean(probs.argmax(-1) == test[1])
        assert row["test_accuracy"].item() == pytest.approx(accuracy)
        assert 1 <= row["best_epoch"].item() <= 2
    figure = result.plot()
    assert len(figure.axes) == 2
    assert "2 seeds" in figure._suptitle.get_text()


def test_the_checkpoint_is_the_best_validation_epoch_and_runs_repeat():
    x, y, _ = _data()
    first, again = (
        keras_olm.compare_balancers(
            _builder(x),
            x,
            y,
            balancers=["heads"],
            seeds=(3,),
            epochs=3,
            verbose=0,
        )
        for _ in range(2)
    )
    curve = first.curves[("heads", 3)]["fused"]
    run = first.runs.iloc[0]
    assert first.scored_on == "validation"
    assert run["best_epoch"] == int(np.argmax(curve)) + 1
    assert run["val_accuracy"] == pytest.approx(max(curve))
    # Same seed, same initial weights and batches: the same run.
    np.testing.assert_allclose(
        first.probabilities[("heads", 3)],
        again.probabilities[("heads", 3)],
        atol=1e-5,
    )


def test_configured_balancers_by_label_and_the_plot_file(tmp_path):
    x, y, test = _data()
    result = keras_olm.compare_balancers(
        _builder(x),
        x,
        y,
        balancers={
            "plain": None,
            "pmr-fast": lambda: keras_olm.PMR(alpha=2.0),
        },
        test_data=test,
        seeds=(0,),
        epochs=1,
        reference="pmr-fast",
        verbose=0,
    )
    assert list(result.table.index) == ["plain", "pmr-fast"]
    assert "vs_pmr-fast" in result.table.columns
    path = tmp_path / "comparison.png"
    result.plot(path, title="mine")
    assert path.stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"balancers": ["heads", "nope"]}, ValueError, "'nope'"),
        ({"balancers": []}, ValueError, "empty"),
        ({"balancers": ["heads", "heads"]}, ValueError, "repeat"),
        ({"reference": "pmr"}, ValueError, "'pmr'"),
        ({"seeds": ()}, ValueError, "seeds"),
        ({"validation_split": 0.0}, ValueError, "validation_split"),
        ({"balancers": {"x": 3}}, TypeError, "'x'"),
        ({"test_data": "nope"}, TypeError, "`test_data` must be a tuple"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, words):
    x, y, _ = _data()
    with pytest.raises(error, match=words):
        keras_olm.compare_balancers(
            _builder(x), x, y, epochs=1, verbose=0, **kwargs
        )


def test_inputs_must_be_arrays_and_lengths_agree():
    x, y, _ = _data()
    with pytest.raises(TypeError, match="`x` must be a dict or list"):
        keras_olm.compare_balancers(_builder(x), object(), y, verbose=0)
    with pytest.raises(ValueError, match="240 samples and `y` 239"):
        keras_olm.compare_balancers(_builder(x), x, y[:-1], verbose=0)


def test_best_checkpoint_names_a_missing_head():
    x, y, _ = _data()
    model = _builder(x)("heads")
    model.compile(optimizer="adam")
    best = BestCheckpoint((x, y), head="audio")
    with pytest.raises(ValueError, match="no head 'audio'"):
        model.fit(x, y, epochs=1, callbacks=[best], verbose=0)
