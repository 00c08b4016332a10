"""Figures of the diagnostics table, drawn with matplotlib.

The paper's figures from `LogitNormHistory` rows: per-class logit norms
and scores (`plot_logit_norms`), every head's accuracy (`plot_accuracy`),
the balancer's coefficients and λ (`plot_coefficients`), and all of them
into a folder (`plot_diagnostics`). Each takes one run or several, to be
drawn side by side.
"""

import math
import os

import numpy as np

from keras_olm.callbacks.tables import read_csv
from keras_olm.callbacks.tables import typed_records

#: Per-class quantities that `plot_logit_norms` can draw, with axis labels.
PER_CLASS_VALUES = {
    "logit_norm": "mean L2 norm of the logits",
    "modulated_norm": "mean L2 norm of the modulated logits",
    "logit_score": "mean logit of the true class",
    "class_acc": "accuracy on the class (recall)",
}


# --- runs ------------------------------------------------------------------


def _is_callback(run):
    """Whether `run` is a `LogitNormHistory` (or any object that keeps its
    rows as a list in `history`), recognised without importing it: the
    callback's module draws its figures with this one."""
    return isinstance(getattr(run, "history", None), list)


def _load_run(run):
    """One run's rows from a path, a DataFrame, a callback or rows."""
    if _is_callback(run):
        return run.history
    if isinstance(run, str | os.PathLike):
        return read_csv(run)
    if hasattr(run, "to_dict"):  # a pandas DataFrame
        return typed_records(run)
    if isinstance(run, list | tuple) and all(isinstance(r, dict) for r in run):
        return list(run)
    raise TypeError(
        "A run must be a CSV path, a pandas DataFrame, a LogitNormHistory "
        f"or a list of dict rows; got {type(run).__name__}."
    )


def _load_runs(runs, labels):
    single = (
        isinstance(runs, str | os.PathLike)
        or _is_callback(runs)
        or hasattr(runs, "to_dict")
        or (
            isinstance(runs, list | tuple)
            and runs
            and all(isinstance(r, dict) for r in runs)
        )
    )
    runs = [runs] if single else list(runs)
    if not runs:
        raise ValueError("No runs to plot.")
    loaded = [_load_run(r) for r in runs]
    for i, rows in enumerate(loaded):
        if not rows:
            raise ValueError(f"Run {i} has no rows to plot.")
    if labels is None:
        labels = [_default_label(r, i, len(runs)) for i, r in enumerate(runs)]
    labels = [str(label) for label in labels]
    if len(labels) != len(runs):
        raise ValueError(
            f"Got {len(labels)} labels for {len(runs)} runs; give one each."
        )
    return loaded, labels


def _default_label(run, index, total):
    if isinstance(run, str | os.PathLike):
        path = os.fspath(run)
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return parent or os.path.basename(path)
    return "" if total == 1 else f"run {index + 1}"


# --- figures ---------------------------------------------------------------


def _heads_of(rows):
    heads = []
    for row in rows:
        if row["head"] not in heads:
            heads.append(row["head"])
    return heads


def _classes_of(rows):
    names = {}
    for row in rows:
        names.setdefault(int(row["class"]), str(row["class_name"]))
    return [(c, names[c]) for c in sorted(names)]


def _series(rows, value, **match):
    """`(epochs, values)` of the rows matching `match`, by epoch."""
    points = {}
    for row in rows:
        if all(row[k] == v for k, v in match.items()):
            points[int(row["epoch"])] = float(row.get(value, math.nan))
    epochs = sorted(points)
    return np.array(epochs), np.array([points[e] for e in epochs])


def _has_values(rows, value):
    return any(not math.isnan(float(row.get(value, math.nan))) for row in rows)


def _class_colors(num):
    from matplotlib import colormaps

    name = "tab10" if num <= 10 else "tab20" if num <= 20 else "viridis"
    cmap = colormaps[name]
    if name == "viridis":
        return [cmap(i / max(num - 1, 1)) for i in range(num)]
    return [cmap(i) for i in range(num)]


def _figure(nrows, ncols, sharey):
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(3.6 * ncols + 1.6, 2.9 * nrows + 0.6), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _title(label, name):
    return f"{label}: {name}" if label else name


def _save(fig, path):
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_logit_norms(
    runs, labels=None, value="logit_norm", heads=None, path=None, sharey=True
):
    """Per-class curves over epochs: one row per run, one panel per head.

    The analogue of the paper's Fig. 5 (and Fig. 1 C-D): give a run without
    OLM and one with it to get A-B above C-D. With
    `value="logit_score"` it draws Fig. 6 B and D.

    Args:
        runs: one run or a list of runs. A run is a CSV path written by
            `LogitNormHistory`, a pandas DataFrame of those rows, a list of
            dict rows or a `LogitNormHistory`.
        labels: list of str or `None`. One label per run, used in the panel
            titles. Defaults to `None` (the CSV's folder names, or
            "run 1", "run 2", ...).
        value: str. The per-class column to draw: `"logit_norm"`,
            `"modulated_norm"`, `"logit_score"` or `"class_acc"`. Defaults
            to `"logit_norm"`.
        heads: list of str or `None`. Heads to draw, e.g.
            `["audio", "visual"]` for the unimodal heads only. Defaults to
            `None` (every head of the first run).
        path: str or `None`. Where to save the figure as PNG. Defaults to
            `None` (not saved).
        sharey: bool. Whether all panels share the y axis, so that heads
            and runs compare at a glance. Defaults to `True`.

    Returns:
        The matplotlib `Figure`.

    Example:
    ```python
    keras_olm.callbacks.plot_logit_norms(
        ["runs/joint/olm_diagnostics.csv", "runs/olm/olm_diagnostics.csv"],
        labels=["without OLM", "with OLM"],
        heads=["audio", "visual"],
        path="fig5.png",
    )
    ```
    """
    if value not in PER_CLASS_VALUES:
        raise ValueError(
            f"value must be one of {list(PER_CLASS_VALUES)}; got {value!r}."
        )
    loaded, labels = _load_runs(runs, labels)
    heads = list(heads) if heads is not None else _heads_of(loaded[0])
    classes = _classes_of(loaded[0])
    colors = _class_colors(len(classes))
    fig, axes = _figure(len(loaded), len(heads), sharey)
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        for j, head in enumerate(heads):
            ax = axes[r, j]
            for (c, _), color in zip(classes, colors):
                epochs, values = _series(rows, value, head=head, **{"class": c})
                ax.plot(epochs, values, marker=".", color=color)
            ax.set_title(_title(label, head))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(PER_CLASS_VALUES[value])
    handles = [_line(color, name) for (_, name), color in zip(classes, colors)]
    fig.legend(
        handles=handles,
        title="class",
        loc="outside right upper",
        ncols=1 if len(classes) <= 20 else 2,
        fontsize="small",
    )
    return _save(fig, path)


def _line(color, label, style="-"):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, linestyle=style, label=label)


def plot_accuracy(runs, labels=None, path=None):
    """Every head's accuracy on the measured data over epochs, per run.

    The analogue of the paper's Fig. 6 A and C: the unimodal and fused
    heads' accuracy, one panel per run.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`).
        labels: list of str or `None`. One label per run. Defaults to
            `None`.
        path: str or `None`. Where to save the figure as PNG. Defaults to
            `None`.

    Returns:
        The matplotlib `Figure`.
    """
    loaded, labels = _load_runs(runs, labels)
    fig, axes = _figure(1, len(loaded), True)
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        ax = axes[0, r]
        for head in _heads_of(rows):
            epochs, values = _series(rows, "acc", head=head, **{"class": 0})
            ax.plot(epochs, values, marker=".", label=head)
        ax.set_title(_title(label, "accuracy on the measured data"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(title="head", fontsize="small")
        if r == 0:
            ax.set_ylabel("accuracy")
    return _save(fig, path)


def plot_coefficients(runs, labels=None, path=None):
    """The balancer's coefficients and λ per head over epochs, per run.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`). Runs
            without coefficients (`balancer=None`) show empty panels.
        labels: list of str or `None`. One label per run. Defaults to
            `None`.
        path: str or `None`. Where to save the figure as PNG. Defaults to
            `None`.

    Returns:
        The matplotlib `Figure`.
    """
    loaded, labels = _load_runs(runs, labels)
    fig, axes = _figure(len(loaded), 2, False)
    names = {"coef": "logit coefficient w", "lambda": "rebalancing factor λ"}
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        for j, column in enumerate(("coef", "lambda")):
            ax = axes[r, j]
            for head in _heads_of(rows):
                epochs, values = _series(
                    rows, column, head=head, **{"class": 0}
                )
                ax.plot(epochs, values, marker=".", label=head)
            if not _has_values(rows, column):
                ax.text(
                    0.5,
                    0.5,
                    "no coefficients\n(balancer without them)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_title(_title(label, names[column]))
            ax.set_xlabel("epoch")
            ax.set_ylabel(column)
            ax.grid(alpha=0.3)
            if _has_values(rows, column):
                ax.legend(title="head", fontsize="small")
    return _save(fig, path)


def plot_diagnostics(runs, out_dir, labels=None):
    """Draws every figure of `LogitNormHistory` into a folder.

    Writes `logit_norms.png`, `logit_scores.png`, `accuracy.png` and, when
    any run has coefficients, `modulated_norms.png` and
    `coefficients.png`.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`).
        out_dir: str. The folder (created when missing).
        labels: list of str or `None`. One label per run. Defaults to
            `None`.

    Returns:
        The list of the PNG paths written.
    """
    loaded, labels = _load_runs(runs, labels)
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def out(name):
        paths.append(os.path.join(out_dir, name))
        return paths[-1]

    plot_logit_norms(loaded, labels, "logit_norm", path=out("logit_norms.png"))
    has_coefficients = any(_has_values(rows, "coef") for rows in loaded)
    if has_coefficients:
        plot_logit_norms(
            loaded, labels, "modulated_norm", path=out("modulated_norms.png")
        )
    plot_logit_norms(
        loaded, labels, "logit_score", path=out("logit_scores.png")
    )
    plot_accuracy(loaded, labels, path=out("accuracy.png"))
    if has_coefficients:
        plot_coefficients(loaded, labels, path=out("coefficients.png"))
    return paths
