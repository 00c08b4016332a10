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


def stopped_epochs(rows):
    """The epoch in which each stopped head stopped, from the rows.

    Reads the `stopped_epoch` column that `LogitNormHistory` writes (the
    first epoch whose logged `<head>_gate` is 0, taken from every epoch's
    logs) and, for rows without it, the first measured epoch whose
    `train_gate` column (the logged `<head>_gate`) is 0.

    Args:
        rows: list of dict rows of one run.

    Returns:
        A dict from head name to the epoch (int) it stopped in; heads that
        never stopped (and runs without head stopping) are absent.
    """
    stops = {}
    for row in sorted(rows, key=lambda r: int(r["epoch"])):
        head = row["head"]
        stopped = float(row.get("stopped_epoch", math.nan))
        gate = float(row.get("train_gate", math.nan))
        if not math.isnan(stopped):
            stops[head] = int(stopped)
        elif head not in stops and not math.isnan(gate) and gate < 0.5:
            stops[head] = int(row["epoch"])
    return stops


def coefficients_constant(rows):
    """Whether a run's coefficients have values, all equal (never moved).

    Args:
        rows: list of dict rows of one run.

    Returns:
        The constant value (float) when every logged coefficient of every
        head equals the same value, else `None` (also when the run has no
        coefficients).
    """
    values = {
        float(row["coef"])
        for row in rows
        if not math.isnan(float(row.get("coef", math.nan)))
    }
    return values.pop() if len(values) == 1 else None


def _mark_stops(ax, stops, heads, colors=None):
    """A dotted vertical line and a label at each stopped head's epoch."""
    for i, head in enumerate(heads):
        if head not in stops:
            continue
        color = "0.3" if colors is None else colors[i]
        line = ax.axvline(
            stops[head], color=color, linestyle=":", linewidth=1.2
        )
        line.set_gid(f"stop:{head}")
        text = ax.annotate(
            f"{head} stopped",
            xy=(stops[head], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            rotation=90,
            ha="left",
            va="top",
            fontsize=7,
            color=color,
        )
        text.set_gid(f"stop-label:{head}")


def _class_colors(num):
    from matplotlib import colormaps

    name = "tab10" if num <= 10 else "tab20" if num <= 20 else "viridis"
    cmap = colormaps[name]
    if name == "viridis":
        return [cmap(i / max(num - 1, 1)) for i in range(num)]
    return [cmap(i) for i in range(num)]


def _figure(nrows, ncols, sharey, title=None, extra_width=1.6):
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(3.6 * ncols + extra_width, 2.9 * nrows + 0.8),
        layout="constrained",
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    if title:
        fig.suptitle(str(title))
    return fig, axes


def _legend_columns(fig, entries, fontsize=8.0):
    """Legend columns so that `entries` rows fit the figure's height."""
    height_points = fig.get_figheight() * 72 - 60  # title and padding
    per_column = max(1, int(height_points // (fontsize * 1.9)))
    return max(1, math.ceil(entries / per_column))


def _title(label, name):
    return f"{label}: {name}" if label else name


def _save(fig, path):
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        # Constrained layout keeps every artist inside the figure; the
        # tight box is a second guard for long class names.
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)
    return fig


def plot_logit_norms(
    runs,
    labels=None,
    value="logit_norm",
    heads=None,
    path=None,
    sharey=True,
    title=None,
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
        title: str or `None`. The figure's title (e.g. the run's name);
            the quantity drawn follows it. Defaults to `None` (the
            quantity only).

    Returns:
        The matplotlib `Figure`. A head that head stopping stopped gets
        a dotted vertical line and the label "<head> stopped" at the epoch
        it stopped in (see `stopped_epochs`).

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
    fig, axes = _figure(
        len(loaded),
        len(heads),
        sharey,
        _suptitle(title, PER_CLASS_VALUES[value]),
        extra_width=1.6 + 0.9 * max(0, math.ceil(len(classes) / 12) - 1),
    )
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        stops = stopped_epochs(rows)
        for j, head in enumerate(heads):
            ax = axes[r, j]
            for (c, _), color in zip(classes, colors):
                epochs, values = _series(rows, value, head=head, **{"class": c})
                ax.plot(epochs, values, marker=".", color=color)
            _mark_stops(ax, stops, [head])
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
        ncols=_legend_columns(fig, len(classes)),
        fontsize=8,
        title_fontsize=8,
    )
    return _save(fig, path)


def _suptitle(title, what):
    return f"{title}: {what}" if title else what


def _line(color, label, style="-"):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, linestyle=style, label=label)


def plot_accuracy(runs, labels=None, path=None, title=None):
    """Every head's accuracy on the measured data over epochs, per run.

    The analogue of the paper's Fig. 6 A and C: the unimodal and fused
    heads' accuracy, one panel per run.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`).
        labels: list of str or `None`. One label per run. Defaults to
            `None`.
        path: str or `None`. Where to save the figure as PNG. Defaults to
            `None`.
        title: str or `None`. The figure's title (e.g. the run's name).
            Defaults to `None`.

    Returns:
        The matplotlib `Figure`, with each stopped head's epoch marked as
        in `plot_logit_norms`.
    """
    loaded, labels = _load_runs(runs, labels)
    fig, axes = _figure(1, len(loaded), True, _suptitle(title, "accuracy"))
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        ax = axes[0, r]
        heads, colors = _heads_of(rows), []
        for head in heads:
            epochs, values = _series(rows, "acc", head=head, **{"class": 0})
            (line,) = ax.plot(epochs, values, marker=".", label=head)
            colors.append(line.get_color())
        _mark_stops(ax, stopped_epochs(rows), heads, colors)
        ax.set_title(_title(label, "accuracy on the measured data"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(title="head", fontsize="small")
        if r == 0:
            ax.set_ylabel("accuracy")
    return _save(fig, path)


def plot_coefficients(runs, labels=None, path=None, title=None):
    """The balancer's coefficients and λ per head over epochs, per run.

    A run whose coefficients never moved (every head's coefficient the
    same constant, e.g. 1 when OLM's modulation is off) says so in its
    coefficient panel ("constant at 1: no modulation"), and each stopped
    head's epoch is marked as in `plot_logit_norms`.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`). Runs
            without coefficients (`balancer=None`) show empty panels.
        labels: list of str or `None`. One label per run. Defaults to
            `None`.
        path: str or `None`. Where to save the figure as PNG. Defaults to
            `None`.
        title: str or `None`. The figure's title (e.g. the run's name).
            Defaults to `None`.

    Returns:
        The matplotlib `Figure`.
    """
    loaded, labels = _load_runs(runs, labels)
    fig, axes = _figure(
        len(loaded), 2, False, _suptitle(title, "coefficients and λ")
    )
    names = {"coef": "logit coefficient w", "lambda": "rebalancing factor λ"}
    for r, (rows, label) in enumerate(zip(loaded, labels)):
        heads = _heads_of(rows)
        for j, column in enumerate(("coef", "lambda")):
            ax = axes[r, j]
            colors = []
            for head in heads:
                epochs, values = _series(
                    rows, column, head=head, **{"class": 0}
                )
                (line,) = ax.plot(epochs, values, marker=".", label=head)
                colors.append(line.get_color())
            _mark_stops(ax, stopped_epochs(rows), heads, colors)
            constant = coefficients_constant(rows)
            if column == "coef" and constant is not None:
                note = ax.text(
                    0.5,
                    0.08,
                    f"constant at {constant:g}: no modulation",
                    ha="center",
                    va="bottom",
                    transform=ax.transAxes,
                    fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
                )
                note.set_gid("modulation-off")
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


def plot_diagnostics(runs, out_dir, labels=None, title=None):
    """Draws every figure of `LogitNormHistory` into a folder.

    Writes `logit_norms.png`, `logit_scores.png`, `accuracy.png` and, when
    any run has coefficients, `modulated_norms.png` and
    `coefficients.png`.

    Args:
        runs: one run or a list of runs (see `plot_logit_norms`).
        out_dir: str. The folder (created when missing).
        labels: list of str or `None`. One label per run. Defaults to
            `None`.
        title: str or `None`. Every figure's title starts with it (e.g.
            the run's name). Defaults to `None`.

    Returns:
        The list of the PNG paths written.
    """
    loaded, labels = _load_runs(runs, labels)
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def out(name):
        paths.append(os.path.join(out_dir, name))
        return paths[-1]

    plot_logit_norms(
        loaded,
        labels,
        "logit_norm",
        path=out("logit_norms.png"),
        title=title,
    )
    has_coefficients = any(_has_values(rows, "coef") for rows in loaded)
    if has_coefficients:
        plot_logit_norms(
            loaded,
            labels,
            "modulated_norm",
            path=out("modulated_norms.png"),
            title=title,
        )
    plot_logit_norms(
        loaded,
        labels,
        "logit_score",
        path=out("logit_scores.png"),
        title=title,
    )
    plot_accuracy(loaded, labels, path=out("accuracy.png"), title=title)
    if has_coefficients:
        plot_coefficients(
            loaded, labels, path=out("coefficients.png"), title=title
        )
    return paths
