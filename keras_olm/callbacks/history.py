"""`LogitNormHistory`: the callback that measures the diagnostics.

At the end of every few epochs it measures, on held-out data, every head's
per-class logit norms, scores and accuracies (`head_statistics`) and the
balancer's coefficients, keeps them as rows (see `tables`), and draws the
figures of `plots` when training ends. Runs on the host, with numpy, on
every Keras backend.
"""

import math
import os
import warnings

import keras
import numpy as np

from keras_olm.callbacks.plots import plot_diagnostics
from keras_olm.callbacks.tables import CSV_NAME
from keras_olm.callbacks.tables import column_order
from keras_olm.callbacks.tables import write_csv

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
    epoch, as Keras' progress bar counts them). With head stopping the
    modality heads' rows have `train_gate` (the logged `<head>_gate`: 1
    while the head trains its encoder, 0 once stopped) and
    `stopped_epoch`, the epoch in which the head stopped (read from every
    epoch's logs, measured or not; NaN while it trains); the same epochs
    are kept in `stopped_epochs` (head -> epoch).

    Rows are kept in `history` (a list of dicts, one per epoch x head x
    class; `to_dataframe()` gives a pandas DataFrame, if pandas is
    installed) and, with `out_dir`, rewritten to
    `out_dir/olm_diagnostics.csv` after every measured epoch. Rows of
    further `fit` calls are appended to the same table.
    When training ends the callback draws into `out_dir`:
    `logit_norms.png` (per-class raw norms over epochs, one panel per head),
    `modulated_norms.png` and `coefficients.png` (coefficients and λ) when
    the balancer has coefficients, `logit_scores.png`, and `accuracy.png`
    (every head's accuracy on `data`, Fig. 6 A), each titled with
    `run_name` (or the model's name); the figures mark the epoch in which
    a head stopped, and `coefficients.png` says when the coefficients
    never moved (modulation off). With `log_dir` it writes
    TensorBoard scalars `acc/{head}`, `logit_norm/{head}` and, when
    available, `modulated_norm/{head}`, `coef/{head}`, `lambda/{head}`.

    Measure on held-out data (a validation split), never on the batches
    that train the model or on OLM's own held-out `held_out_data`. The
    measurement is one inference pass over `data` per measured epoch;
    keep `data` to a few thousand samples or raise `every`.

    Args:
        data: the data to measure on: an `(inputs, labels)` tuple, with
            `inputs` a dict from modality name to array and `labels` integer
            class ids of shape `(n,)`, or a batched `tf.data.Dataset` of
            `(inputs, labels[, sample_weight])` (sample weights are
            ignored). Its modality keys must be the model's. The arrays
            may also come as two arguments,
            `LogitNormHistory(x_val, y_val, out_dir=...)`; the arguments
            after the data may be given by position in the order below.
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
        run_name: str or `None`. Names the run in every figure's title.
            Defaults to `None` (the model's `name`).

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
        *positional,
        out_dir=None,
        log_dir=None,
        every=1,
        class_names=None,
        batch_size=256,
        plot=True,
        run_name=None,
    ):
        super().__init__()
        data, options = _data_and_options(
            data,
            positional,
            {
                "out_dir": out_dir,
                "log_dir": log_dir,
                "every": every,
                "class_names": class_names,
                "batch_size": batch_size,
                "plot": plot,
            },
        )
        out_dir, log_dir, every, class_names, batch_size, plot = (
            options.values()
        )
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
        self.run_name = None if run_name is None else str(run_name)
        self.stopped_epochs = {}
        self.figures = []
        self.history = []
        self._writer = None

    # --- paths ---------------------------------------------------------

    @property
    def csv_path(self):
        """Path of the CSV file, or `None` without `out_dir`."""
        if self.out_dir is None:
            return None
        return os.path.join(self.out_dir, CSV_NAME)

    @property
    def title(self):
        """The figures' title: `run_name`, else the model's name."""
        if self.run_name is not None:
            return self.run_name
        model = getattr(self, "_model", None)
        return None if model is None else model.name

    def to_dataframe(self):
        """The recorded rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.history, columns=column_order(self.history))

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
        for head in self.model.head_names:
            gate = (logs or {}).get(f"{head}_gate")
            if gate is None or head in self.stopped_epochs:
                continue
            if float(keras.ops.convert_to_numpy(gate)) < 0.5:
                self.stopped_epochs[head] = epoch + 1
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
            self.figures = plot_diagnostics(
                self.history, self.out_dir, title=self.title
            )
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
                if "train_gate" in row:
                    row["stopped_epoch"] = self.stopped_epochs.get(
                        head, math.nan
                    )
                row.update(global_logs)
                rows.append(row)
        return rows

    def _predict(self, model):
        if self._arrays is not None:
            x, y = self._arrays
            y = _class_labels(y)
            logits = model.predict_heads(
                x, batch_size=self.batch_size, verbose=0
            )
            return logits, y
        # One pass, batch by batch, so that labels stay aligned with the
        # logits even when the dataset reshuffles on every pass.
        outs = {h: [] for h in model.head_names}
        labels = []
        for element in self._dataset.as_numpy_iterator():
            x, y = element[0], _class_labels(element[1])
            logits = model.head_logits(x)
            for h in model.head_names:
                outs[h].append(keras.ops.convert_to_numpy(logits[h]))
            labels.append(np.reshape(y, (-1,)))
        if not labels:
            raise ValueError(f"{_WHERE}: the dataset yielded no batches.")
        y = np.concatenate(labels).astype("int64")
        return {h: np.concatenate(v) for h, v in outs.items()}, y

    def _check_data(self, model):
        # Models with regression heads take {"label": ..., name: ...}
        # targets; the diagnostics read the class labels only.
        if self._arrays is not None:
            x, y = self._arrays
            model.input_plan.check_arrays(x, y, _WHERE)
            return
        spec = self._dataset.element_spec
        model.input_plan.check_dataset_spec(spec, _WHERE)
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


_OPTION_NAMES = (
    "out_dir",
    "log_dir",
    "every",
    "class_names",
    "batch_size",
    "plot",
)


def _data_and_options(data, positional, options):
    """`data` and the options, from `LogitNormHistory`'s arguments.

    Takes `(x, y)` as one tuple or as two arguments (`x` a dict of
    arrays, `y` labels: anything but a path or `None`); the positional
    arguments after the data are the options in signature order.
    """
    positional = list(positional)
    if (
        isinstance(data, dict)
        and positional
        and positional[0] is not None
        and not isinstance(positional[0], str | os.PathLike)
    ):
        data = (data, positional.pop(0))
    if isinstance(data, dict):
        raise TypeError(
            f"{_WHERE} must be an (inputs, labels) tuple of arrays or a "
            "batched tf.data.Dataset of (inputs, labels); got the inputs "
            "alone. Pass the labels too: LogitNormHistory((x, y), "
            "out_dir=...) or LogitNormHistory(x, y, out_dir=...)."
        )
    if len(positional) > len(_OPTION_NAMES):
        raise TypeError(
            "LogitNormHistory takes (data, out_dir=None, log_dir=None, "
            "every=1, class_names=None, batch_size=256, plot=True, "
            f"run_name=None); got {len(positional)} arguments after data."
        )
    defaults = {
        "out_dir": None,
        "log_dir": None,
        "every": 1,
        "class_names": None,
        "batch_size": 256,
        "plot": True,
    }
    for name, value in zip(_OPTION_NAMES, positional):
        if options[name] != defaults[name]:
            raise TypeError(
                f"LogitNormHistory got two values for {name!r} (one "
                "positional, one by keyword)."
            )
        options[name] = value
    return data, options


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
