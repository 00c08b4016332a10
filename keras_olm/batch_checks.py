"""Checks of every batch, for every input form, with one error text.

`fit`, `evaluate`, `predict`, `validation_data` and held-out data take
arrays, `tf.data.Dataset`s, `keras.utils.PyDataset`s, generators and
torch `DataLoader`s. Arrays are checked whole, up front
(`keras_olm.input_plan.InputPlan`); the other forms are checked batch by
batch as they are read, before a step sees the batch:

- a `tf.data.Dataset` by ops added to its pipeline (`dataset_checks`);
- a `PyDataset`, a generator or a `DataLoader` on the host, in numpy,
  by a wrapper of the same form (`checked`, `BatchCheck`).

Both check the same things and raise the same text: every modality and
the labels have one batch size; labels are integer class ids in `[0,
num_classes)` (NaN, 2.5, 7 of 4 classes and strings are errors, not
truncated or clipped); sample weights are finite and non-negative;
regression targets are finite; and, where asked (`finite_inputs`, for
evaluation, validation and held-out data, which no training step guards),
floating-point inputs are finite. The training inputs' finiteness is left
to the training step's non-finite guard, which sums the loss and the
gradients anyway.

Errors raised inside a tf.data pipeline reach Python as a TensorFlow
`OpError`, worded by TensorFlow; `clear_errors` turns those of these
checks into the `BatchError` with the checks' own text, the same on
every backend.
"""

import functools
import re
import types

import keras
import numpy as np
import tensorflow as tf

from keras_olm.inputs import LABEL

#: How a check's message starts inside a TensorFlow error.
_MARK = "BatchError: "
_FOUND = re.compile(re.escape(_MARK) + r"(.*?)(?:\]\n|\]$|\n|$)", re.S)


class BatchError(ValueError, tf.errors.InvalidArgumentError):
    """A batch failed the input checks: the message names the argument,
    the modality or the labels, and the batch.

    A `ValueError`, and a `tf.errors.InvalidArgumentError` as the errors
    of tf.data's own checks are.
    """

    def __init__(self, message):
        tf.errors.InvalidArgumentError.__init__(self, None, None, message)
        self.args = (message,)

    def __str__(self):
        return self.message

    def __reduce__(self):
        return type(self), (self.message,)


def clear_error(error):
    """The `BatchError` a TensorFlow error carries, or `error` itself.

    Args:
        error: an exception.

    Returns:
        A `BatchError` with the check's own text when `error` is a
        `tf.errors.OpError` raised by these checks (inside a tf.data
        pipeline or a generator that tf.data reads); otherwise `error`.
    """
    if isinstance(error, BatchError) or not isinstance(
        error, tf.errors.OpError
    ):
        return error
    found = _FOUND.search(error.message)
    if found is None:
        return error
    text = found.group(1).strip()
    # tf.debugging.Assert prints its strings C-escaped.
    text = text.replace("\\'", "'").replace('\\"', '"')
    return BatchError(text)


def clear_errors(method):
    """Decorates `fit`, `evaluate` or `predict`: an error of these checks
    raised inside TensorFlow comes out as the `BatchError`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except tf.errors.OpError as error:
            clear = clear_error(error)
            if clear is error:
                raise
            raise clear from None

    return wrapper


# --- messages ---------------------------------------------------------------
# One text per check, for the numpy and the tf.data checks alike (the
# tf.data checks pass "{}" for the batch and the value and format them in
# the pipeline).


def sizes_message(where, index, sizes):
    return (
        f"{where}: every modality (and the labels) must have the same batch "
        f"size; batch {index} has {sizes}."
    )


def not_integer_message(where, index, value):
    return (
        f"{where}: labels must be integer class ids; batch {index} holds "
        f"the label {value}."
    )


def out_of_range_message(where, index, num_classes, value):
    return (
        f"{where}: labels must lie in [0, {num_classes}); batch {index} "
        f"holds the label {value}."
    )


def not_finite_message(where, index, modality):
    return (
        f"{where}: modality '{modality}' must be finite; batch {index} holds "
        "NaN or inf."
    )


def weight_message(where, index, value):
    return (
        f"{where}: sample weights must be finite and non-negative; batch "
        f"{index} holds the weight {value}."
    )


def target_message(where, index, name):
    return (
        f"{where}: regression target {name} must be finite; batch {index} "
        "holds NaN or inf."
    )


def label_dtype_message(where, dtype):
    return f"{where}: labels must be integer class ids; got dtype {dtype}."


def is_numeric_dtype(dtype):
    """Whether labels of this numpy dtype can be class ids (integers,
    booleans and real floats; not strings, objects or complex numbers)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biuf"


# --- numpy, on the host -----------------------------------------------------


def finite(values):
    """Whether a numpy array holds no NaN or inf: one sum, and an
    element-wise check only where the sum is not finite (a sum of finite
    values may overflow)."""
    if not np.issubdtype(values.dtype, np.inexact) or not values.size:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(values)):
            return True
    return bool(np.isfinite(values).all())


def _numpy(value):
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception:
        return keras.ops.convert_to_numpy(value)


class BatchCheck:
    """Checks one batch in numpy; raises `BatchError`.

    Args:
        modalities: list of str. The encoders' keys.
        num_classes: int. Labels must lie in `[0, num_classes)`.
        regression_targets: dict from regression target name to width.
        where: str. The argument, for the messages.
        finite_inputs: bool. Whether floating-point inputs must be finite.
        labels: bool. Whether the batches hold labels (`False` for
            `predict`, which ignores any).

    Example:
    ```python
    check = BatchCheck(["a", "v"], 4, {}, "evaluate", finite_inputs=True)
    check(({"a": xa, "v": xv}, y), index=0)  # BatchError if bad
    ```
    """

    def __init__(
        self,
        modalities,
        num_classes,
        regression_targets,
        where,
        finite_inputs,
        labels=True,
    ):
        self.modalities = list(modalities)
        self.num_classes = int(num_classes)
        self.regression_targets = dict(regression_targets)
        self.where = where
        self.finite_inputs = finite_inputs
        self.labels = labels

    def __call__(self, batch, index):
        if isinstance(batch, list):
            batch = tuple(batch)
        if not isinstance(batch, tuple):
            batch = (batch,)
        x = batch[0]
        if not isinstance(x, dict):
            return  # Keras or the model's own checks name other forms.
        where = self.where
        sizes = {m: _numpy(v).shape[:1] for m, v in x.items()}
        targets = {}
        y = sw = None
        if self.labels and len(batch) > 1 and batch[1] is not None:
            y = batch[1]
            if isinstance(y, dict):
                targets = {n: _numpy(y[n]) for n in self.regression_targets}
                y = y.get(LABEL)
            y = None if y is None else _numpy(y)
            sw = _numpy(batch[2]) if len(batch) > 2 else None
            if y is not None:
                sizes["labels"] = y.shape[:1]
        sizes = {k: s[0] if s else 1 for k, s in sizes.items()}
        if len(set(sizes.values())) > 1:
            raise BatchError(sizes_message(where, index, sizes))
        if y is not None:
            self._check_labels(y, index)
        if sw is not None:
            sw = sw.astype("float64").reshape(-1)
            bad = ~(np.isfinite(sw) & (sw >= 0))
            if bad.any():
                value = sw[int(np.argmax(bad))]
                raise BatchError(weight_message(where, index, _text(value)))
        for name, values in targets.items():
            if not finite(values.astype("float32")):
                raise BatchError(target_message(where, index, name))
        if self.finite_inputs:
            for m in self.modalities:
                if m in x and not finite(_numpy(x[m])):
                    raise BatchError(not_finite_message(where, index, m))

    def _check_labels(self, y, index):
        where = self.where
        if not is_numeric_dtype(y.dtype):
            raise BatchError(label_dtype_message(where, y.dtype))
        y = y.reshape(-1)
        if y.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = ~(np.isfinite(y) & np.equal(np.floor(y), y))
            if bad.any():
                value = y[int(np.argmax(bad))]
                raise BatchError(
                    not_integer_message(where, index, _text(value))
                )
        bad = (y < 0) | (y >= self.num_classes)
        if bad.any():
            value = int(y[int(np.argmax(bad))])
            raise BatchError(
                out_of_range_message(where, index, self.num_classes, value)
            )


def _text(value):
    """A number as the messages print it (as TensorFlow's format does)."""
    value = float(value)
    if np.isfinite(value) and value == int(value):
        return str(int(value))
    return str(np.float32(value))


class CheckedPyDataset(keras.utils.PyDataset):
    """A `PyDataset`'s batches, each checked as it is read.

    Args:
        data: the `keras.utils.PyDataset`; its workers, multiprocessing and
            queue settings are taken over.
        check: a `BatchCheck`.
    """

    def __init__(self, data, check):
        super().__init__(
            workers=data.workers,
            use_multiprocessing=data.use_multiprocessing,
            max_queue_size=data.max_queue_size,
        )
        self.data = data
        self.check = check

    @property
    def num_batches(self):
        return self.data.num_batches

    def __getitem__(self, index):
        batch = self.data[index]
        self.check(batch, index)
        return batch

    def on_epoch_begin(self):
        self.data.on_epoch_begin()

    def on_epoch_end(self):
        self.data.on_epoch_end()


def _checked_generator(data, check):
    for index, batch in enumerate(data):
        check(batch, index)
        yield batch


@functools.cache
def _checked_loader_class(loader_class):
    class CheckedDataLoader(loader_class):
        """The loader's batches, each checked as it is read."""

        def __iter__(self):
            for index, batch in enumerate(super().__iter__()):
                self._batch_check(batch, index)
                yield batch

    return CheckedDataLoader


def checked(data, check):
    """`data` with every batch checked by `check` as it is read.

    Args:
        data: a `keras.utils.PyDataset`, a generator or a torch
            `DataLoader` (anything else comes back as it is: arrays and
            datasets are checked otherwise).
        check: a `BatchCheck`.

    Returns:
        Data of the same form, whose batches are `data`'s.
    """
    from keras.src.trainers.data_adapters import is_torch_dataloader

    if isinstance(data, CheckedPyDataset):
        return data
    if isinstance(data, keras.utils.PyDataset):
        return CheckedPyDataset(data, check)
    if isinstance(data, types.GeneratorType):
        return _checked_generator(data, check)
    if is_torch_dataloader(data):
        import copy

        loader = copy.copy(data)
        loader.__class__ = _checked_loader_class(type(data))
        loader._batch_check = check
        return loader
    return data


# --- tf.data, in the pipeline -----------------------------------------------


def _tf_finite(values):
    """Whether a tensor holds no NaN or inf (one sum; element-wise only
    where the sum is not finite)."""
    if not values.dtype.is_floating:
        return tf.constant(True)
    total = tf.reduce_sum(tf.cast(values, "float32"))
    return tf.cond(
        tf.math.is_finite(total),
        lambda: tf.constant(True),
        lambda: tf.reduce_all(tf.math.is_finite(values)),
    )


def _tf_assert(ok, message, *values):
    """A check that passes where `ok` holds and otherwise fails with
    `message`, a `tf.strings.format` template, formatted with `values`
    (tensors, or callables that return one). The message is formatted
    only on failure."""

    def fail():
        args = [v() if callable(v) else v for v in values]
        text = tf.strings.format(_MARK + message, args)
        with tf.control_dependencies([tf.debugging.Assert(False, [text])]):
            return tf.identity(ok)

    return tf.cond(ok, lambda: tf.identity(ok), fail)


def _first(values, bad):
    return tf.gather(values, tf.argmax(tf.cast(bad, "int32")))


def dataset_checks(
    index,
    x,
    y,
    sample_weight,
    targets,
    *,
    modalities,
    num_classes,
    where,
    finite_inputs,
):
    """The checks of one tf.data batch, as assert ops (graph mode).

    Args:
        index: int64 scalar. The batch's position in the pass.
        x: dict from modality name to the batch.
        y: the labels, `(batch,)`.
        sample_weight: the sample weights or `None`.
        targets: dict from regression target name to values.
        modalities, num_classes, where, finite_inputs: as in `BatchCheck`.

    Returns:
        A list of ops that must run before the batch is used.
    """
    if not (y.dtype.is_integer or y.dtype.is_floating or y.dtype == tf.bool):
        raise BatchError(label_dtype_message(where, y.dtype.name))
    deps = []
    n = tf.shape(y)[0]
    sizes = [tf.shape(x[m])[0] for m in modalities]
    template = (
        "{" + ", ".join(f"'{m}': {{}}" for m in modalities) + ", 'labels': {}}"
    )
    same = tf.reduce_all([tf.equal(s, n) for s in sizes])
    deps.append(
        _tf_assert(same, sizes_message(where, "{}", template), index, *sizes, n)
    )
    if y.dtype.is_floating:
        bad = tf.logical_not(
            tf.logical_and(tf.math.is_finite(y), tf.equal(tf.floor(y), y))
        )
        deps.append(
            _tf_assert(
                tf.logical_not(tf.reduce_any(bad)),
                not_integer_message(where, "{}", "{}"),
                index,
                lambda: _first(y, bad),
            )
        )
        with tf.control_dependencies(deps):
            yi = tf.cast(y, "int64")
    else:
        yi = tf.cast(y, "int64")
    bad = tf.logical_or(yi < 0, yi >= num_classes)
    deps.append(
        _tf_assert(
            tf.logical_not(tf.reduce_any(bad)),
            out_of_range_message(where, "{}", num_classes, "{}"),
            index,
            lambda: _first(yi, bad),
        )
    )
    if sample_weight is not None:
        sw = tf.reshape(tf.cast(sample_weight, "float32"), [-1])
        bad = tf.logical_not(tf.logical_and(tf.math.is_finite(sw), sw >= 0))
        deps.append(
            _tf_assert(
                tf.logical_not(tf.reduce_any(bad)),
                weight_message(where, "{}", "{}"),
                index,
                lambda: _first(sw, bad),
            )
        )
    for name, values in targets.items():
        deps.append(
            _tf_assert(
                _tf_finite(values), target_message(where, "{}", name), index
            )
        )
    if finite_inputs:
        for m in modalities:
            deps.append(
                _tf_assert(
                    _tf_finite(x[m]), not_finite_message(where, "{}", m), index
                )
            )
    return deps
