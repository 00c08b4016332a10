"""Tests of `keras_olm.callbacks`: the logit-norm diagnostics callback.

Two short fits per backend are shared by the tests: one with OLM and array
data, one with `balancer=None` and a reshuffled tf.data dataset.
"""

import glob
import math
import os
import struct
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_olm
from keras_olm import callbacks

NUM_CLASSES = 4
CLASS_NAMES = ["north", "east", "south", "west"]
HEADS = ["fast", "slow", "fused"]


def tiny_model(balancer):
    encoders = {
        m: keras.Sequential([keras.layers.Dense(16, activation="relu")])
        for m in ("fast", "slow")
    }
    return keras_olm.BalancedMultimodalModel(
        encoders, NUM_CLASSES, balancer=balancer
    )


def held_out():
    return keras_olm.synthetic.make_imbalanced(160, seed=1)


def train_data():
    return keras_olm.synthetic.make_imbalanced(320, seed=0)


def assert_png(path):
    """A non-empty PNG whose chunks and pixel data decode."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, chunks, idat = 8, [], b""
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        data = blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + data) == crc, (path, kind)
        chunks.append(kind)
        if kind == b"IDAT":
            idat += data
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
    width, height = struct.unpack(">II", blob[16:24])
    assert width > 200 and height > 150, (width, height)
    assert len(zlib.decompress(idat)) > width * height
    from PIL import Image

    with Image.open(path) as image:
        image.verify()


@pytest.fixture(scope="module")
def olm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("olm")
    x, y = train_data()
    xv, yv = held_out()
    model = tiny_model("olm")
    model.compile(optimizer="adam")
    cb = callbacks.LogitNormHistory(
        (xv, yv),
        out_dir=str(root / "out"),
        log_dir=str(root / "tb"),
        class_names=CLASS_NAMES,
    )
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=64,
        callbacks=[cb],
        verbose=0,
    )
    return model, cb, history, root


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    x, y = train_data()
    xv, yv = held_out()
    ds = (
        tf.data.Dataset.from_tensor_slices((xv, yv))
        .shuffle(len(yv), seed=3, reshuffle_each_iteration=True)
        .batch(48)
    )
    model = tiny_model(None)
    model.compile(optimizer="adam")
    cb = callbacks.LogitNormHistory(ds, out_dir=str(root), every=2)
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=64,
        validation_data=(xv, yv),
        callbacks=[cb],
        verbose=0,
    )
    return model, cb, history, root


def by_epoch_head_class(rows):
    return {(r["epoch"], r["head"], r["class"]): r for r in rows}


def hand_statistics(logits, y):
    """The expected per-class values, computed directly with numpy."""
    out = {}
    for c in range(NUM_CLASSES):
        s = logits[y == c]
        out[c] = {
            "count": len(s),
            "logit_norm": np.mean(np.sqrt(np.sum(s**2, axis=1))),
            "logit_score": np.mean(s[:, c]),
            "class_acc": np.mean(np.argmax(s, axis=1) == c),
        }
    return out


# --- the OLM run -------------------------------------------------------------


def test_csv_rows_and_columns(olm_run):
    _, cb, _, root = olm_run
    path = root / "out" / callbacks.CSV_NAME
    assert cb.csv_path == str(path)
    rows = callbacks.read_csv(path)
    assert len(rows) == 3 * len(HEADS) * NUM_CLASSES
    assert len(cb.history) == len(rows)
    keys = by_epoch_head_class(rows)
    for epoch in (1, 2, 3):
        for head in HEADS:
            for c in range(NUM_CLASSES):
                row = keys[(epoch, head, c)]
                assert row["class_name"] == CLASS_NAMES[c]
    columns = set(rows[0])
    for column in (
        "epoch",
        "head",
        "class",
        "class_name",
        "count",
        "logit_norm",
        "modulated_norm",
        "logit_score",
        "class_acc",
        "acc",
        "head_logit_norm",
        "coef",
        "lambda",
        # Logs of the head, renamed, and logs of the whole model.
        "train_acc",
        "train_loss",
        "train_coef",
        "log_loss",
    ):
        assert column in columns, column
    # The CSV holds what the callback holds in memory.
    for saved, kept in zip(rows, cb.history):
        for key, value in kept.items():
            if isinstance(value, str):
                assert saved[key] == value
            else:
                np.testing.assert_allclose(saved[key], value, rtol=1e-12)
    assert sum(r["count"] for r in rows if r["epoch"] == 1) == 3 * 160


def test_logs_are_recorded_per_head(olm_run, joint_run):
    for _, cb, history, _ in (olm_run, joint_run):
        logs = history.history
        rows = by_epoch_head_class(cb.history)
        for epoch in sorted({r["epoch"] for r in cb.history}):
            for head in HEADS:
                row = rows[(epoch, head, 0)]
                i = epoch - 1
                np.testing.assert_allclose(
                    row["train_acc"], logs[f"{head}_acc"][i]
                )
                np.testing.assert_allclose(
                    row["train_loss"], logs[f"{head}_loss"][i]
                )
                np.testing.assert_allclose(row["log_loss"], logs["loss"][i])
                if "val_loss" in logs:
                    np.testing.assert_allclose(
                        row["val_acc"], logs[f"val_{head}_acc"][i]
                    )
                    np.testing.assert_allclose(
                        row["log_val_loss"], logs["val_loss"][i]
                    )
    assert "val_acc" in joint_run[1].history[0]
    assert "val_acc" not in olm_run[1].history[0]


def test_norms_match_numpy_at_the_end(olm_run):
    model, cb, _, _ = olm_run
    xv, yv = held_out()
    logits = model.predict_heads(xv)
    rows = by_epoch_head_class(cb.history)
    for head in HEADS:
        expected = hand_statistics(logits[head], yv)
        acc = np.mean(np.argmax(logits[head], axis=1) == yv)
        mean_norm = np.mean(np.linalg.norm(logits[head], axis=1))
        for c in range(NUM_CLASSES):
            row = rows[(3, head, c)]
            assert row["count"] == expected[c]["count"]
            for key in ("logit_norm", "logit_score", "class_acc"):
                np.testing.assert_allclose(
                    row[key], expected[c][key], rtol=1e-5, err_msg=key
                )
            np.testing.assert_allclose(row["acc"], acc, rtol=1e-6)
            np.testing.assert_allclose(
                row["head_logit_norm"], mean_norm, rtol=1e-5
            )


def test_coefficients_match_the_balancer(olm_run):
    model, cb, history, _ = olm_run
    coefficients = keras.ops.convert_to_numpy(model.balancer.coefficients)
    lambdas = keras.ops.convert_to_numpy(model.balancer.lambdas)
    rows = by_epoch_head_class(cb.history)
    for i, head in enumerate(HEADS):
        for c in range(NUM_CLASSES):
            row = rows[(3, head, c)]
            np.testing.assert_allclose(row["coef"], coefficients[i], rtol=1e-6)
            np.testing.assert_allclose(row["lambda"], lambdas[i], rtol=1e-6)
            np.testing.assert_allclose(
                row["modulated_norm"],
                abs(coefficients[i]) * row["logit_norm"],
                rtol=1e-6,
            )
        # Every epoch's coefficient is the one fit logged for that epoch.
        for epoch in (1, 2, 3):
            np.testing.assert_allclose(
                rows[(epoch, head, 0)]["coef"],
                history.history[f"{head}_coef"][epoch - 1],
                rtol=1e-6,
            )


def test_pngs_are_written(olm_run):
    _, _, _, root = olm_run
    for name in (
        "logit_norms.png",
        "modulated_norms.png",
        "logit_scores.png",
        "accuracy.png",
        "coefficients.png",
    ):
        assert_png(root / "out" / name)


def test_tensorboard_scalars(olm_run):
    _, _, _, root = olm_run
    events = glob.glob(str(root / "tb" / "events.out.tfevents.*"))
    assert events
    tags = set()
    steps = set()
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
                steps.add(event.step)
    for head in HEADS:
        for name in ("acc", "logit_norm", "modulated_norm", "coef", "lambda"):
            assert f"{name}/{head}" in tags
    assert steps == {1, 2, 3}


def test_plot_two_runs_side_by_side(olm_run, joint_run, tmp_path):
    _, _, _, olm_root = olm_run
    _, _, _, joint_root = joint_run
    runs = [
        joint_root / callbacks.CSV_NAME,
        str(olm_root / "out" / callbacks.CSV_NAME),
    ]
    path = tmp_path / "fig5.png"
    fig = callbacks.plot_logit_norms(
        runs, labels=["joint", "OLM"], heads=["fast", "slow"], path=path
    )
    axes = fig.get_axes()
    assert len(axes) == 4
    assert axes[0].get_title() == "joint: fast"
    assert axes[3].get_title() == "OLM: slow"
    assert axes[0].get_xlabel() == "epoch"
    assert_png(path)
    fig = callbacks.plot_coefficients(runs, labels=["joint", "OLM"])
    assert [ax.get_title() for ax in fig.get_axes()][::2] == [
        "joint: logit coefficient w",
        "OLM: logit coefficient w",
    ]
    # A pandas DataFrame and the callback itself are runs too.
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(runs[1])
    fig = callbacks.plot_accuracy([frame, olm_run[1]], labels=["csv", "cb"])
    assert len(fig.get_axes()) == 2


def test_to_dataframe(olm_run):
    pytest.importorskip("pandas")
    _, cb, _, _ = olm_run
    frame = cb.to_dataframe()
    assert len(frame) == 36
    assert list(frame.columns[:4]) == ["epoch", "head", "class", "class_name"]


# --- without coefficients, from a dataset ---------------------------------


def test_without_coefficients(joint_run):
    model, cb, _, root = joint_run
    assert not hasattr(model.balancer, "coefficients")
    rows = callbacks.read_csv(root / callbacks.CSV_NAME)
    # every=2 over 3 epochs: epoch 2, and the last epoch.
    assert sorted({r["epoch"] for r in rows}) == [2, 3]
    assert len(rows) == 2 * len(HEADS) * NUM_CLASSES
    for row in rows:
        assert math.isnan(row["coef"])
        assert math.isnan(row["lambda"])
        assert math.isnan(row["modulated_norm"])
        assert row["class_name"] == str(row["class"])
    for name in ("logit_norms.png", "logit_scores.png", "accuracy.png"):
        assert_png(root / name)
    assert not os.path.exists(root / "modulated_norms.png")
    assert not os.path.exists(root / "coefficients.png")


def test_dataset_norms_match_numpy(joint_run):
    # The dataset reshuffles every pass: labels must stay with their logits.
    model, cb, _, _ = joint_run
    xv, yv = held_out()
    logits = model.predict_heads(xv)
    rows = by_epoch_head_class(cb.history)
    for head in HEADS:
        expected = hand_statistics(logits[head], yv)
        for c in range(NUM_CLASSES):
            row = rows[(3, head, c)]
            assert row["count"] == expected[c]["count"]
            for key in ("logit_norm", "logit_score", "class_acc"):
                np.testing.assert_allclose(
                    row[key], expected[c][key], rtol=1e-5, err_msg=key
                )


# --- errors and the math --------------------------------------------------


def test_wrong_modality_names_the_modality():
    x, y = train_data()
    xv, yv = held_out()
    bad = {"fast": xv["fast"], "audio": xv["slow"]}
    model = tiny_model("heads")
    model.compile(optimizer="adam")
    cb = callbacks.LogitNormHistory((bad, yv))
    with pytest.raises(
        ValueError,
        match=r"LogitNormHistory data: .* missing modalities \['slow'\] "
        r"and unknown modalities \['audio'\]",
    ):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((bad, yv)).batch(32)
    cb = callbacks.LogitNormHistory(ds)
    with pytest.raises(ValueError, match="'audio'"):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)
    cb = callbacks.LogitNormHistory(
        tf.data.Dataset.from_tensor_slices((xv, yv))
    )
    with pytest.raises(ValueError, match="batch it"):
        model.fit(x, y, epochs=1, callbacks=[cb], verbose=0)


def test_bad_arguments():
    xv, yv = held_out()
    with pytest.raises(TypeError, match="dict from modality"):
        callbacks.LogitNormHistory((xv["fast"], yv))
    with pytest.raises(TypeError, match="tuple of arrays"):
        callbacks.LogitNormHistory(xv)
    with pytest.raises(ValueError, match="every"):
        callbacks.LogitNormHistory((xv, yv), every=0)
    with pytest.raises(ValueError, match="value must be one of"):
        callbacks.plot_logit_norms([{"head": "a"}], value="norm")


def test_head_statistics_by_hand():
    logits = np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 0, 1])
    stats = callbacks.head_statistics(logits, labels, 3)
    np.testing.assert_allclose(stats["logit_norm"][:2], [3.0, 1.0])
    np.testing.assert_allclose(stats["logit_score"][:2], [1.5, 0.0])
    np.testing.assert_allclose(stats["class_acc"][:2], [0.0, 0.0])
    np.testing.assert_array_equal(stats["count"], [2, 1, 0])
    assert math.isnan(stats["logit_norm"][2])
    assert stats["acc"] == 0.0
    np.testing.assert_allclose(stats["head_logit_norm"], 7.0 / 3.0)


def test_model_with_a_regression_head(tmp_path):
    """Dict targets ({"label", "valence"}): the diagnostics read the labels."""
    x, y = train_data()
    xv, yv = held_out()
    valence = np.linspace(-1.0, 1.0, len(y)).astype("float32")
    encoders = {
        m: keras.Sequential([keras.layers.Dense(8, activation="relu")])
        for m in ("fast", "slow")
    }
    model = keras_olm.BalancedMultimodalModel(
        encoders, NUM_CLASSES, regression_targets={"valence": 1}
    )
    model.compile(optimizer="adam")
    val_targets = {"label": yv, "valence": np.zeros(len(yv), "float32")}
    ds = tf.data.Dataset.from_tensor_slices((xv, val_targets)).batch(64)
    for data in ((xv, val_targets), ds):
        cb = callbacks.LogitNormHistory(data, log_dir=None)
        model.fit(
            x,
            {"label": y, "valence": valence},
            epochs=1,
            callbacks=[cb],
            verbose=0,
        )
        rows = cb.to_dataframe()
        assert set(rows["head"]) == set(HEADS)
        counts = rows[rows["head"] == "fused"]["count"].sum()
        assert counts == len(yv)
