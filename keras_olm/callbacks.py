"""Diagnostics of balanced multimodal training: the paper's figures, live.

`LogitNormHistory` is a Keras callback that measures, at the end of every
few epochs and on held-out data of your choosing, what Zong et al. (IJCAI
2024) plot to show modality imbalance and what OLM does about it:

- the per-class mean L2 norm of every head's logit vectors (Fig. 1 C-D,
  Fig. 5), raw and multiplied by the head's OLM coefficient (the modulated
  norm, the quantity OLM steers);
- the per-class average logit score (Fig. 1 B, Fig. 6 B and D);
- every head's accuracy (Fig. 1 A, Fig. 6 A and C);
- the balancer's coefficients and rebalancing factors λ, when it has them.

It keeps one tidy table (one row per epoch x head x class), writes it to a
CSV file, draws the figures as PNG files when training ends and, when asked,
writes TensorBoard scalars. The module-level `plot_*` functions draw the
same figures from saved CSV files, so that runs with and without OLM can be
shown side by side, as in the paper's Fig. 5 (A-B against C-D).

Everything here runs on the host, with numpy, on every Keras backend.
"""

import csv
import math
import os
import warnings

import keras
import numpy as np

from keras_olm import inputs as inputs_lib

#: Name of the CSV file that `LogitNormHistory` writes under `out_dir`.
CSV_NAME = "olm_diagnostics.csv"

#: Per-class quantities that `plot_logit_norms` can draw, with axis labels.
PER_CLASS_VALUES = {
    "logit_norm": "mean L2 norm of the logits",
    "modulated_norm": "mean L2 norm of the modulated logits",
    "logit_score": "mean logit of the true class",
    "class_acc": "accuracy on the class (recall)",
}

# The leading columns of every row, in the order the CSV file lists them.
_COLUMNS = (
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
)
_TEXT_COLUMNS = ("head", "class_name")
_INT_COLUMNS = ("epoch", "class", "count")

_WHERE = "LogitNormHistory data"


class LogitNormHistory(keras.callbacks.Callback):
    """Records per-class logit norms, scores and accuracies of every head.

    At the end of every `every` epochs (and of the last epoch), the callback
    runs the model on `data` with `model.predict_heads` and records, for
    every head h (each modality's and `"fused"`) and every class c, over
    the samples of `data` whose label is c:

    - `logit_norm`: the mean of ||s_h||_2, the L2 norm of the head's raw
      logit vector (Fig. 1 C-D and Fig. 5 of the paper);
    - `modulated_norm`: |w_h| * `logit_norm`, the mean norm of the
      modulated logits w_h * s_h that OLM's loss sees, where w_h is the
      head's current coefficient; NaN when the balancer has no
      `coefficients` (`balancer=None`, `"heads"`, ...);
    - `logit_score`: the mean of s_h[c], the raw logit of the true class
      (the "batch-averaged logit score" of Fig. 1 B and Fig. 6 B, D);
    - `class_acc`: the share of those samples that the head classifies
      correctly (the recall of class c);
    - `count`: how many samples of class c `data` holds (the per-class
      values are NaN for a class with none).

    Each row also repeats values of the head as a whole: `acc` (accuracy on
    all of `data`), `head_logit_norm` (mean ||s_h||_2 over all samples),
    `coef` and `lambda` (the balancer's coefficient w_h and rebalancing
    factor λ_h at the end of the epoch, NaN when it has none), and the
    epoch's `fit` logs: a log of the head, `{head}_{name}` or
    `val_{head}_{name}`, becomes the column `train_{name}` or `val_{name}`
    (e.g. `fast_acc` becomes `train_acc` on the rows of head `fast`); any
    other log becomes `log_{key}` on every row (e.g. `log_loss`,
    `log_val_loss`). `epoch` counts the epochs completed (1 after the first
    epoch, as Keras' progress bar counts them).

    Rows are kept in `history` (a list of dicts, one per epoch x head x
    class; `to_dataframe()` gives a pandas DataFrame, if pandas is
    installed) and, with `out_dir`, rewritten to
    `out_dir/olm_diagnostics.csv` after every measured epoch. Rows of
    further `fit` calls are appended to the same table.
    When training ends the callback draws into `out_dir`:
    `logit_norms.png` (per-class raw norms over epochs, one panel per head),
    `modulated_norms.png` and `coefficients.png` (coefficients and λ) when
    the balancer has coefficients, `logit_scores.png`, and `accuracy.png`
    (every head's accuracy on `data`, Fig. 6 A). With `log_dir` it writes
    TensorBoard scalars `acc/{head}`, `logit_norm/{head}` and, when
    available, `modulated_norm/{head}`, `coef/{head}`, `lambda/{head}`.

    Measure on held-out data (a validation split), never on the batches
    that train the model or on OLM's own held-out `dev_data`. The
    measurement is one inference pass over `data` per measured epoch;
    keep `data` to a few thousand samples or raise `every`.

    Args:
        data: the data to measure on: an `(inputs, labels)` tuple, with
            `inputs` a dict from modality name to array and `labels` integer
            class ids of shape `(n,)`, or a batched `tf.data.Dataset` of
            `(inputs, labels[, sample_weight])` (sample weights are
            ignored). Its modality keys must be the model's.
        out_dir: str or `None`. Folder for the CSV file and the PNG
            figures (created when missing). `None` keeps everything in
            memory only. Defaults to `None`.
        log_dir: str or `None`. Folder for TensorBoard scalars. Defaults to
            `None`.
        every: int. Measure after epochs `every`, `2 * every`, ... and
            after the final epoch `epochs` of `fit` (not after an epoch
            where another callback stopped training early). Defaults to
            `1`.
        class_names: list of str or `None`. One name per class, used in the
            table and the legends. Defaults to `None` (the class ids).
        batch_size: int. Inference batch size for array `data`. Defaults
            to `256`.
        plot: bool. Whether to draw the PNG figures into `out_dir` when
            training ends. Defaults to `True`.

    Example:
    ```python
    x, y = keras_olm.synthetic.make_imbalanced(2000, seed=0)
    x_val, y_val = keras_olm.synthetic.make_imbalanced(500, seed=1)
    model = keras_olm.BalancedMultimodalModel(encoders, num_classes=4)
    model.compile(optimizer="adam")
    diagnostics = keras_olm.callbacks.LogitNormHistory(
        (x_val, y_val), out_dir="runs/olm", log_dir="runs/olm/tb"
    )
    model.fit(x, y, epochs=20, callbacks=[diagnostics])
    diagnostics.to_dataframe()  # or runs/olm/olm_diagnostics.csv
    # Side by side with a run without OLM (Fig. 5 of the paper):
    keras_olm.callbacks.plot_logit_norms(
        ["runs/joint/olm_diagnostics.csv", "runs/olm/olm_diagnostics.csv"],
        labels=["joint training", "OLM"],
        path="norms.png",
    )
    ```
    """

    def __init__(
        self,
        data,
        out_dir=None,
        log_dir=None,
        every=1,
        class_names=None,
        batch_size=256,
        plot=True,
    ):
        super().__init__()
        self._arrays, self._dataset = _split_data(data)
        if isinstance(every, bool) or not isinstance(every, int | np.integer):
            raise TypeError(f"every must be a positive int; got {every!r}.")
        if every < 1:
            raise ValueError(f"every must be a positive int; got {every}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.data = data
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.every = int(every)
        self.class_names = None if class_names is None else list(class_names)
        self.batch_size = int(batch_size)
        self.plot = bool(plot)
        self.history = []
        self._writer = None

    # --- paths ---------------------------------------------------------

    @property
    def csv_path(self):
        """Path of the CSV file, or `None` without `out_dir`."""
        if self.out_dir is None:
            return None
        return os.path.join(self.out_dir, CSV_NAME)

    def to_dataframe(self):
        """The recorded rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.history, columns=_column_order(self.history))

    # --- Keras hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        for attribute in ("head_names", "modalities", "predict_heads"):
            if not hasattr(model, attribute):
                raise TypeError(
                    "LogitNormHistory needs a keras_olm "
                    "BalancedMultimodalModel (with `head_names` and "
                    f"`predict_heads`); got {type(model).__name__}."
                )
        self._check_data(model)
        if self.class_names is not None and (
            len(self.class_names) != model.num_classes
        ):
            raise ValueError(
                f"class_names has {len(self.class_names)} names but the "
                f"model has {model.num_classes} classes."
            )
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        last = (self.params or {}).get("epochs")
        if (epoch + 1) % self.every != 0 and epoch + 1 != last:
            return
        rows = self.measure(epoch + 1, logs)
        self.history.extend(rows)
        if self.out_dir is not None:
            write_csv(self.history, self.csv_path)
        if self._writer is not None:
            self._write_summaries(rows, epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.out_dir is None or not self.plot or not self.history:
            return
        try:
            plot_diagnostics(self.history, self.out_dir)
        except Exception as error:  # training must still end well
            warnings.warn(
                f"LogitNormHistory could not draw its figures ({error!r}); "
                f"the table is saved in {self.csv_path} and "
                "keras_olm.callbacks.plot_diagnostics redraws them.",
                stacklevel=2,
            )

    # --- measurement -----------------------------------------------------

    def measure(self, epoch, logs=None):
        """Measures the model on `data` now, without recording the rows.

        Args:
            epoch: int. The value of the rows' `epoch` column.
            logs: dict or `None`. Logs to add to the rows (see the class
                docstring for their column names).

        Returns:
            A list of dict rows, one per head x class.
        """
        model = self.model
        logits, y = self._predict(model)
        coefficients = _read_variable(model.balancer, "coefficients")
        lambdas = _read_variable(model.balancer, "lambdas")
        per_head_logs, global_logs = _split_logs(logs, model.head_names)
        names = self.class_names or [str(c) for c in range(model.num_classes)]
        rows = []
        for i, head in enumerate(model.head_names):
            stats = head_statistics(logits[head], y, model.num_classes)
            coef = math.nan if coefficients is None else coefficients[i]
            lam = math.nan if lambdas is None else lambdas[i]
            for c in range(model.num_classes):
                row = {
                    "epoch": int(epoch),
                    "head": head,
                    "class": c,
                    "class_name": names[c],
                    "count": int(stats["count"][c]),
                    "logit_norm": stats["logit_norm"][c],
                    "modulated_norm": abs(coef) * stats["logit_norm"][c],
                    "logit_score": stats["logit_score"][c],
                    "class_acc": stats["class_acc"][c],
                    "acc": stats["acc"],
                    "head_logit_norm": stats["head_logit_norm"],
                    "coef": coef,
                    "lambda": lam,
                }
                row.update(per_head_logs.get(head, {}))
                row.update(global_logs)
                rows.append(row)
        return rows

    def _predict(self, model):
        if self._arrays is not None:
            x, y = self._arrays
            y = _class_labels(y)
            return model.predict_heads(x, batch_size=self.batch_size), y
        # One pass, batch by batch, so that labels stay aligned with the
        # logits even when the dataset reshuffles on every pass.
        outs = {h: [] for h in model.head_names}
        labels = []
        for element in self._dataset.as_numpy_iterator():
            x, y = element[0], _class_labels(element[1])
            logits = model.predict_heads(x, batch_size=max(len(y), 1))
            for h in model.head_names:
                outs[h].append(logits[h])
            labels.append(np.reshape(y, (-1,)))
        if not labels:
            raise ValueError(f"{_WHERE}: the dataset yielded no batches.")
        y = np.concatenate(labels).astype("int64")
        return {h: np.concatenate(v) for h, v in outs.items()}, y

    def _check_data(self, model):
        # Models with regression heads take {"label": ..., name: ...}
        # targets; the diagnostics read the class labels only.
        targets = getattr(model, "regression_targets", None) or None
        if self._arrays is not None:
            x, y = self._arrays
            inputs_lib.check_arrays(
                x,
                y,
                model.modalities,
                model.num_classes,
                _WHERE,
                regression_targets=targets,
            )
            return
        spec = self._dataset.element_spec
        inputs_lib.check_dataset_spec(
            spec, model.modalities, _WHERE, regression_targets=targets
        )
        labels = spec[1]["label"] if isinstance(spec[1], dict) else spec[1]
        if labels.shape.rank == 0:
            raise ValueError(
                f"{_WHERE}: the dataset yields single samples; batch it "
                "first (e.g. `data.batch(256)`)."
            )

    def _write_summaries(self, rows, step):
        import tensorflow as tf

        heads = {}
        for row in rows:
            heads.setdefault(row["head"], row)
        with self._writer.as_default():
            for head, row in heads.items():
                values = {
                    "acc": row["acc"],
                    "logit_norm": row["head_logit_norm"],
                    "modulated_norm": abs(row["coef"]) * row["head_logit_norm"],
                    "coef": row["coef"],
                    "lambda": row["lambda"],
                }
                for name, value in values.items():
                    if not math.isnan(value):
                        tf.summary.scalar(f"{name}/{head}", value, step=step)
        self._writer.flush()


def _class_labels(y):
    """The class labels of a target (a dict's `"label"` entry), 1-D."""
    y = np.asarray(y["label"] if isinstance(y, dict) else y)
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


# --- the math --------------------------------------------------------------


def head_statistics(logits, labels, num_classes):
    """Per-class logit norms, scores and accuracy of one head, with numpy.

    Args:
        logits: array `(n, num_classes)`. Raw logits of the head.
        labels: int array `(n,)`. True classes.
        num_classes: int. Number of classes.

    Returns:
        A dict with `count`, `logit_norm` (mean ||s||_2 over the samples of
        each class), `logit_score` (mean logit of the true class),
        `class_acc` (per-class accuracy), all arrays `(num_classes,)` with
        NaN for a class without samples, and the scalars `acc` (accuracy)
        and `head_logit_norm` (mean ||s||_2 over all samples).
    """
    logits = np.asarray(logits, dtype="float64")
    labels = np.asarray(labels).reshape(-1).astype("int64")
    norms = np.linalg.norm(logits, axis=-1)
    scores = logits[np.arange(len(labels)), labels]
    correct = (np.argmax(logits, axis=-1) == labels).astype("float64")
    count = np.bincount(labels, minlength=num_classes).astype("float64")

    def class_mean(values):
        sums = np.bincount(labels, weights=values, minlength=num_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, sums / count, np.nan)

    return {
        "count": count.astype("int64"),
        "logit_norm": class_mean(norms),
        "logit_score": class_mean(scores),
        "class_acc": class_mean(correct),
        "acc": float(np.mean(correct)) if len(labels) else math.nan,
        "head_logit_norm": float(np.mean(norms)) if len(labels) else math.nan,
    }


def _split_data(data):
    """`(arrays, dataset)`: exactly one is not None."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
        if not isinstance(x, dict):
            raise TypeError(
                f"{_WHERE}: inputs must be a dict from modality name to "
                f"array; got {type(x).__name__}."
            )
        x = {m: np.asarray(v) for m, v in x.items()}
        if isinstance(y, dict):  # {"label": ..., regression targets}
            return (x, {k: np.asarray(v) for k, v in y.items()}), None
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        return (x, y), None
    if hasattr(data, "element_spec") and hasattr(data, "as_numpy_iterator"):
        return None, data
    raise TypeError(
        f"{_WHERE} must be an (inputs, labels) tuple of arrays or a batched "
        f"tf.data.Dataset of (inputs, labels); got {type(data).__name__}."
    )


def _read_variable(balancer, name):
    variable = getattr(balancer, name, None)
    if variable is None:
        return None
    value = getattr(variable, "value", variable)
    values = np.asarray(keras.ops.convert_to_numpy(value), dtype="float64")
    return [float(v) for v in values.reshape(-1)]


def _split_logs(logs, head_names):
    """Logs as per-head columns (`train_x`, `val_x`) and `log_` columns."""
    per_head, other = {}, {}
    by_length = sorted(head_names, key=len, reverse=True)
    for key, value in (logs or {}).items():
        try:
            value = float(keras.ops.convert_to_numpy(value))
        except (TypeError, ValueError):
            continue  # not a scalar
        prefix, rest = (
            ("val", key[4:])
            if key.startswith("val_")
            else (
                "train",
                key,
            )
        )
        head = next((h for h in by_length if rest.startswith(h + "_")), None)
        if head is None:
            other[f"log_{key}"] = value
        else:
            name = rest[len(head) + 1 :]
            per_head.setdefault(head, {})[f"{prefix}_{name}"] = value
    return per_head, other


# --- the table on disk -----------------------------------------------------


def _column_order(rows):
    extra = []
    seen = set(_COLUMNS)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                extra.append(key)
    return list(_COLUMNS) + extra


def write_csv(rows, path):
    """Writes diagnostic rows to a CSV file (atomically).

    Args:
        rows: list of dicts, e.g. `LogitNormHistory.history`.
        path: str. The file to write.
    """
    columns = _column_order(rows)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_csv(path):
    """Reads a CSV file written by `LogitNormHistory` into dict rows.

    Args:
        path: str. The file.

    Returns:
        A list of dicts with `epoch`, `class`, `count` as int, `head` and
        `class_name` as str, and every other column as float (NaN where
        empty).
    """
    with open(path, newline="") as f:
        return [_typed(row) for row in csv.DictReader(f)]


def _typed(row):
    out = {}
    for key, value in row.items():
        if key in _TEXT_COLUMNS:
            out[key] = value
        elif key in _INT_COLUMNS:
            out[key] = int(float(value))
        else:
            out[key] = float(value) if value not in ("", None) else math.nan
    return out


def _load_run(run):
    """One run's rows from a path, a DataFrame, a callback or rows."""
    if isinstance(run, LogitNormHistory):
        return run.history
    if isinstance(run, str | os.PathLike):
        return read_csv(run)
    if hasattr(run, "to_dict"):  # a pandas DataFrame
        return [_typed_any(r) for r in run.to_dict("records")]
    if isinstance(run, list | tuple) and all(isinstance(r, dict) for r in run):
        return list(run)
    raise TypeError(
        "A run must be a CSV path, a pandas DataFrame, a LogitNormHistory "
        f"or a list of dict rows; got {type(run).__name__}."
    )


def _typed_any(row):
    return {
        k: (str(v) if k in _TEXT_COLUMNS else v) for k, v in dict(row).items()
    }


def _load_runs(runs, labels):
    single = (
        isinstance(runs, str | os.PathLike | LogitNormHistory)
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


__all__ = [
    "CSV_NAME",
    "LogitNormHistory",
    "head_statistics",
    "plot_accuracy",
    "plot_coefficients",
    "plot_diagnostics",
    "plot_logit_norms",
    "read_csv",
    "write_csv",
]
