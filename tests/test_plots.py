"""Tests of the diagnostics figures: layout, titles, notes and markers.

Drawn with the Agg canvas into a temporary folder, from hand-made rows
(no training), and once from a short fit with head stopping.
"""

import math
import os

import keras
import numpy as np
import pytest

import keras_olm
from keras_olm import callbacks
from keras_olm.callbacks import plots

HEADS = ("rgb", "depth", "fused")


def rows_of(num_classes=19, epochs=6, coef=lambda head, epoch: 1.0, stop=None):
    """Diagnostic rows; `stop` maps a head to the epoch its gate fell."""
    rows = []
    for epoch in range(1, epochs + 1):
        for i, head in enumerate(HEADS):
            for c in range(num_classes):
                row = {
                    "epoch": epoch,
                    "head": head,
                    "class": c,
                    "class_name": f"class name {c:02d}",
                    "count": 5,
                    "logit_norm": 1.0 + 0.1 * epoch + 0.05 * c + i,
                    "modulated_norm": 1.0 + 0.1 * epoch,
                    "logit_score": 0.5 * epoch,
                    "class_acc": 0.5,
                    "acc": 0.4 + 0.05 * epoch,
                    "head_logit_norm": 2.0,
                    "coef": coef(head, epoch),
                    "lambda": 1.0 / 3,
                }
                if head != "fused" and stop is not None:
                    stopped = head in stop and epoch >= stop[head]
                    row["train_gate"] = 0.0 if stopped else 1.0
                rows.append(row)
    return rows


def _inside(fig, artist):
    """Whether `artist`'s drawn box lies inside the figure's box."""
    renderer = fig.canvas.get_renderer()
    box = artist.get_window_extent(renderer)
    whole = fig.bbox
    tol = 1.0
    return (
        box.x0 >= whole.x0 - tol
        and box.y0 >= whole.y0 - tol
        and box.x1 <= whole.x1 + tol
        and box.y1 <= whole.y1 + tol
    )


def _draw(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig


@pytest.mark.parametrize(
    "value", ["logit_norm", "logit_score", "modulated_norm"]
)
def test_class_legend_lies_inside_the_figure(tmp_path, value):
    path = tmp_path / f"{value}.png"
    fig = callbacks.plot_logit_norms(
        rows_of(19), value=value, path=path, title="my run"
    )
    assert os.path.getsize(path) > 0
    _draw(fig)
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 19
    assert _inside(fig, legend)
    for text in legend.get_texts():
        assert _inside(fig, text)
    assert _inside(fig, fig._suptitle)


def test_every_figure_is_written_and_titled_with_the_run(tmp_path):
    paths = callbacks.plot_diagnostics(
        rows_of(4, coef=lambda h, e: 1.0 + 0.1 * e), tmp_path, title="rgbd-7"
    )
    names = sorted(os.path.basename(p) for p in paths)
    assert names == [
        "accuracy.png",
        "coefficients.png",
        "logit_norms.png",
        "logit_scores.png",
        "modulated_norms.png",
    ]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for function in (
        callbacks.plot_logit_norms,
        callbacks.plot_accuracy,
        callbacks.plot_coefficients,
    ):
        fig = function(rows_of(4), title="rgbd-7")
        assert fig._suptitle.get_text().startswith("rgbd-7")


def _notes(fig):
    return [
        t
        for ax in fig.get_axes()
        for t in ax.texts
        if t.get_gid() == "modulation-off"
    ]


def test_modulation_off_note_iff_coefficients_are_constant():
    fig = callbacks.plot_coefficients(rows_of(4))
    (note,) = _notes(fig)
    assert "constant at 1" in note.get_text()
    assert "no modulation" in note.get_text()
    moving = rows_of(4, coef=lambda head, epoch: 1.0 + 0.01 * epoch)
    assert _notes(callbacks.plot_coefficients(moving)) == []
    # One head moving is enough.
    one = rows_of(4, coef=lambda head, epoch: 1.2 if head == "rgb" else 1.0)
    assert _notes(callbacks.plot_coefficients(one)) == []
    # Without coefficients: the "no coefficients" text, not the note.
    none = rows_of(4, coef=lambda head, epoch: math.nan)
    assert _notes(callbacks.plot_coefficients(none)) == []
    assert plots.coefficients_constant(rows_of(4)) == 1.0
    assert plots.coefficients_constant(moving) is None


def _stop_lines(ax):
    return {
        line.get_gid()[len("stop:") :]: line.get_xdata()[0]
        for line in ax.get_lines()
        if (line.get_gid() or "").startswith("stop:")
    }


def test_a_stopped_head_is_marked_at_its_epoch():
    rows = rows_of(4, stop={"depth": 4})
    assert plots.stopped_epochs(rows) == {"depth": 4}
    fig = callbacks.plot_logit_norms(rows)
    by_title = {ax.get_title(): ax for ax in fig.get_axes()}
    assert _stop_lines(by_title["depth"]) == {"depth": 4}
    assert _stop_lines(by_title["rgb"]) == {}
    assert _stop_lines(by_title["fused"]) == {}
    labels = [t.get_text() for t in by_title["depth"].texts]
    assert "depth stopped" in labels
    fig = callbacks.plot_accuracy(rows)
    assert _stop_lines(fig.get_axes()[0]) == {"depth": 4}
    # The recorded `stopped_epoch` wins over a coarser `train_gate`.
    for row in rows:
        if row["head"] == "depth":
            row["stopped_epoch"] = 3
    assert plots.stopped_epochs(rows) == {"depth": 3}
    # No head stopping: no marker.
    assert _stop_lines(callbacks.plot_logit_norms(rows_of(4)).axes[1]) == {}


def test_callback_titles_and_head_stops_from_a_fit(tmp_path):
    x, y = keras_olm.synthetic.make_imbalanced(192, seed=0)
    xv, yv = keras_olm.synthetic.make_imbalanced(96, seed=1)
    encoders = {
        m: keras.Sequential([keras.layers.Dense(8, activation="relu")])
        for m in ("fast", "slow")
    }
    # A held-out batch every step, and no 50 % fall: both heads stop at
    # the second step, in epoch 1 (3 steps an epoch).
    stopping = keras_olm.balancers.HeadStopping(patience=1, min_delta=0.5)
    balancer = keras_olm.balancers.Balancer(head_stopping=stopping)
    balancer.set_held_out_schedule("step", 1)
    model = keras_olm.BalancedMultimodalModel(
        encoders, 4, balancer=balancer, name="tiny_rgbd"
    )
    model.compile(optimizer="adam")
    # The natural two-array form, with the options by keyword.
    cb = callbacks.LogitNormHistory(xv, yv, out_dir=tmp_path, every=2)
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=64,
        held_out_data=(xv, yv),
        callbacks=[cb],
        verbose=0,
    )
    gates = history.history["fast_gate"]
    first = 1 + int(np.argmax(np.asarray(gates) < 0.5))
    assert first == 1 and min(gates) == 0.0
    # Measured after epochs 2 and 3 only, the rows still say epoch 1.
    assert cb.stopped_epochs["fast"] == first
    assert cb.title == "tiny_rgbd"
    rows = [r for r in cb.history if r["head"] == "fast"]
    assert {r["stopped_epoch"] for r in rows} == {first}
    assert sorted(os.path.basename(p) for p in cb.figures) == [
        "accuracy.png",
        "logit_norms.png",
        "logit_scores.png",
    ]
    fig = callbacks.plot_logit_norms(cb, title=cb.title)
    assert "tiny_rgbd" in fig._suptitle.get_text()
    fast = next(ax for ax in fig.get_axes() if ax.get_title() == "fast")
    assert _stop_lines(fast) == {"fast": first}


def test_run_name_and_argument_forms():
    xv, yv = keras_olm.synthetic.make_imbalanced(32, seed=1)
    cb = callbacks.LogitNormHistory(xv, yv, "out", run_name="mine")
    assert cb.out_dir == "out" and cb.title == "mine"
    cb = callbacks.LogitNormHistory((xv, yv), "out", "tb", 2)
    assert (cb.out_dir, cb.log_dir, cb.every) == ("out", "tb", 2)
    with pytest.raises(TypeError, match=r"LogitNormHistory\(x, y, out_dir"):
        callbacks.LogitNormHistory(xv, out_dir="out")
    with pytest.raises(TypeError, match="two values for 'out_dir'"):
        callbacks.LogitNormHistory((xv, yv), "a", out_dir="b")
    with pytest.raises(TypeError, match="takes"):
        callbacks.LogitNormHistory((xv, yv), *range(7))
