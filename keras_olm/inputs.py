"""Input checks and array pipelines for `BalancedMultimodalModel.fit`.

Everything here is tf.data, which keras-olm uses as its input pipeline on
every Keras backend. Bad input is caught here, before a training step can
touch any state, with an error that names the modality or labels at fault.
"""

import numpy as np
import tensorflow as tf

#: Key of the class labels in a dict of targets (models with regression
#: heads take `{"label": class ids, <regression name>: values}`).
LABEL = "label"


def check_modalities(keys, modalities, where):
    """Raises a clear error when input keys differ from the encoders'."""
    keys = set(keys)
    expected = set(modalities)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(keys - expected)
        parts = []
        if missing:
            parts.append(f"missing modalities {missing}")
        if extra:
            parts.append(f"unknown modalities {extra}")
        raise ValueError(
            f"{where}: the input dict must have exactly the encoders' keys "
            f"{sorted(expected)}; " + " and ".join(parts) + "."
        )


def check_arrays(x, y, modalities, num_classes, where, regression_targets=None):
    """Validates array inputs: keys, equal lengths, labels in range.

    With `regression_targets` (a dict from name to width), `y` must be a
    dict `{"label": class ids, name: values, ...}` with finite values.
    """
    if not isinstance(x, dict):
        raise TypeError(
            f"{where}: inputs must be a dict from modality name to array; "
            f"got {type(x).__name__}."
        )
    check_modalities(x.keys(), modalities, where)
    lengths = {m: len(x[m]) for m in modalities}
    targets = {}
    if y is not None:
        y, targets = split_target_arrays(y, regression_targets, where)
        lengths["labels"] = len(y)
        lengths.update({n: len(v) for n, v in targets.items()})
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{where}: every modality (and the labels) must have the same "
            f"number of samples; got {lengths}."
        )
    if not lengths[modalities[0]]:
        raise ValueError(
            f"{where}: the inputs hold no samples (arrays of length 0)."
        )
    if y is not None:
        check_label_values(y, num_classes, where)


def check_finite_arrays(x, where):
    """Raises a clear error when a floating-point input array holds NaN or
    inf, naming the modality and the first such sample.

    Args:
        x: dict from modality name to array.
        where: str. The argument's name, for the error message.
    """
    for m, values in x.items():
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.inexact) or not values.size:
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ValueError(
                f"{where}: modality '{m}' must be finite; sample {index} "
                f"holds NaN or inf ({int((~finite).sum())} such samples in "
                "all)."
            )


def check_sample_weight(sample_weight, num_samples, where):
    """Raises a clear error unless `sample_weight` is `None` or holds one
    weight per sample.

    Args:
        sample_weight: array-like or `None`.
        num_samples: int. The number of samples of the inputs.
        where: str. The call, for the error message.
    """
    if sample_weight is None:
        return
    shape = np.shape(sample_weight)
    if not shape or shape[0] != num_samples:
        raise ValueError(
            f"{where}: `sample_weight` must hold one weight per sample "
            f"({num_samples} samples); got shape {shape}."
        )


def check_not_empty(data, where, what):
    """Raises a clear error when a dataset, a `PyDataset` or a
    `DataLoader` has no batches.

    A `tf.data.Dataset` of unknown cardinality is asked for its first
    batch (one batch is read); forms without a length (generators,
    iterable loaders) are left to Keras.

    Args:
        data: the input data.
        where: str. The call, for the error message.
        what: str. The argument's name, for the error message.
    """
    if isinstance(data, tf.data.Dataset):
        cardinality = int(data.cardinality())
        if cardinality == tf.data.UNKNOWN_CARDINALITY:
            empty = not any(True for _ in data.take(1))
        else:
            empty = cardinality == 0
    else:
        import keras
        from keras.src.trainers.data_adapters import is_torch_dataloader

        if isinstance(data, keras.utils.PyDataset):
            batches = data.num_batches
        elif is_torch_dataloader(data):
            try:
                batches = len(data)
            except TypeError:  # A loader of an iterable dataset.
                batches = None
        else:
            return
        empty = batches == 0
    if empty:
        raise ValueError(f"{where}: `{what}` yields no batches.")


def check_target_keys(keys, regression_targets, where):
    """Raises a clear error when a dict of targets has the wrong keys."""
    expected = {LABEL, *(regression_targets or {})}
    keys = set(keys)
    if keys != expected:
        parts = []
        if expected - keys:
            parts.append(f"missing targets {sorted(expected - keys)}")
        if keys - expected:
            parts.append(f"unknown targets {sorted(keys - expected)}")
        raise ValueError(
            f"{where}: the targets must be a dict with exactly the keys "
            f"{sorted(expected)} (the class labels under '{LABEL}' and one "
            "entry per regression head); " + " and ".join(parts) + "."
        )


def _flat_labels(y):
    """Labels of shape `(n, 1)` (or `(n, 1, 1)`...) as `(n,)`; any other
    shape as it is (`check_label_values` rejects it)."""
    y = np.asarray(y)
    if y.ndim > 1 and y.size == len(y):
        return y.reshape(len(y))
    return y


def split_target_arrays(y, regression_targets, where):
    """`(labels, {name: float32 (n, width)})` from array targets, checked.

    Labels of shape `(n, 1)` come back as `(n,)`.
    """
    if not regression_targets:
        if isinstance(y, dict):
            raise ValueError(
                f"{where}: this model has no regression heads, so the "
                "labels must be an array of class ids, not a dict with keys "
                f"{sorted(y)}."
            )
        return _flat_labels(y), {}
    if not isinstance(y, dict):
        raise ValueError(
            f"{where}: this model has regression heads "
            f"{sorted(regression_targets)}, so the targets must be a dict "
            f"{{'{LABEL}': class ids, "
            + ", ".join(f"'{n}': values" for n in regression_targets)
            + f"}}; got {type(y).__name__}."
        )
    check_target_keys(y.keys(), regression_targets, where)
    targets = {}
    for name, width in regression_targets.items():
        values = np.asarray(y[name])
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
            values.dtype, np.complexfloating
        ):
            raise ValueError(
                f"{where}: regression target '{name}' must be real numbers; "
                f"got dtype {values.dtype}."
            )
        values = values.astype(np.float32)
        n = len(values)
        if values.size != n * width:
            raise ValueError(
                f"{where}: regression target '{name}' must have {width} "
                f"value(s) per sample; got shape {values.shape}."
            )
        values = values.reshape(n, width)
        bad = ~np.isfinite(values).all(axis=1)
        if np.any(bad):
            index = int(np.argmax(bad))
            raise ValueError(
                f"{where}: regression target '{name}' must be finite; sample "
                f"{index} has {values[index].tolist()} ({int(bad.sum())} "
                "non-finite samples in all)."
            )
        targets[name] = values
    return _flat_labels(y[LABEL]), targets


def normalize_targets(y, regression_targets, where):
    """Array targets as fit feeds them: labels `(n,)`, or a dict with them
    and the regression targets `(n, w)`."""
    labels, targets = split_target_arrays(y, regression_targets, where)
    if not regression_targets:
        return labels
    return {LABEL: labels, **targets}


def check_label_values(y, num_classes, where):
    y = np.asarray(y)
    if y.ndim != 1:
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise ValueError(
                f"{where}: labels must be integer class ids of shape "
                f"(batch,); got shape {y.shape}."
            )
        y = y[:, 0]
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{where}: labels must be integer class ids.")
    bad = (y < 0) | (y >= num_classes)
    if np.any(bad):
        index = int(np.argmax(bad))
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes}); sample {index} "
            f"has label {y[index].item()!r} ({int(bad.sum())} bad labels in "
            "all)."
        )


def check_dataset_spec(spec, modalities, where, regression_targets=None):
    """Validates a dataset's element structure: `(dict inputs, labels)`."""
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            f"{where}: a dataset must yield (inputs, labels) or "
            f"(inputs, labels, sample_weight) batches; got {spec}."
        )
    if not isinstance(spec[0], dict):
        raise ValueError(
            f"{where}: the inputs must be a dict from modality name to "
            f"tensor; got {spec[0]}."
        )
    check_modalities(spec[0].keys(), modalities, where)
    if regression_targets:
        if not isinstance(spec[1], dict):
            raise ValueError(
                f"{where}: this model has regression heads "
                f"{sorted(regression_targets)}, so the dataset must yield "
                f"targets as a dict {{'{LABEL}': ..., "
                + ", ".join(f"'{n}': ..." for n in regression_targets)
                + f"}}; got {spec[1]}."
            )
        check_target_keys(spec[1].keys(), regression_targets, where)
    elif isinstance(spec[1], dict):
        raise ValueError(
            f"{where}: this model has no regression heads, so the labels "
            f"must be a tensor of class ids, not a dict with keys "
            f"{sorted(spec[1])}."
        )


def _label_rank(spec, where):
    """The rank of a dataset's labels; raises unless they are class ids of
    shape `(batch,)` or `(batch, 1)`."""
    rank = spec.shape.rank
    if rank is not None and rank > 1:
        if rank > 2 or spec.shape[-1] not in (1, None):
            raise ValueError(
                f"{where}: labels must be integer class ids of shape "
                f"(batch,) or (batch, 1); the dataset yields labels of "
                f"shape {tuple(spec.shape)}."
            )
    return rank


def check_dataset(ds, modalities, num_classes, where, regression_targets=None):
    """Adds in-pipeline checks to a dataset of `(x, y[, sw])` batches.

    Labels of shape `(batch, 1)` come out as `(batch,)`.
    """
    check_dataset_spec(ds.element_spec, modalities, where, regression_targets)
    label_spec = ds.element_spec[1]
    if regression_targets:
        label_spec = label_spec[LABEL]
    label_rank = _label_rank(label_spec, where)

    def check(*element):
        x, targets = element[0], element[1]
        y = targets[LABEL] if regression_targets else targets
        if label_rank == 2:
            one = tf.debugging.assert_equal(
                tf.shape(y)[1],
                1,
                message=(
                    f"{where}: labels must be integer class ids of shape "
                    "(batch,) or (batch, 1)"
                ),
            )
            with tf.control_dependencies([one]):
                y = tf.reshape(y, [-1])
            if regression_targets:
                targets = {**targets, LABEL: y}
            else:
                targets = y
        n = tf.shape(y)[0]
        deps = []
        for m in modalities:
            deps.append(
                tf.debugging.assert_equal(
                    tf.shape(x[m])[0],
                    n,
                    message=(
                        f"{where}: modality {m} has a different batch "
                        "size than the labels"
                    ),
                )
            )
        for name in regression_targets or {}:
            value = targets[name]
            deps.append(
                tf.debugging.assert_equal(
                    tf.shape(value)[0],
                    n,
                    message=(
                        f"{where}: regression target {name} has a different "
                        "batch size than the labels"
                    ),
                )
            )
            deps.append(
                tf.debugging.assert_all_finite(
                    tf.cast(value, "float32"),
                    message=(
                        f"{where}: regression target {name} must be finite "
                        "(found NaN or inf)"
                    ),
                )
            )
        yi = tf.cast(y, tf.int64)
        deps.append(
            tf.debugging.assert_non_negative(
                yi, message=f"{where}: labels must lie in [0, {num_classes})"
            )
        )
        deps.append(
            tf.debugging.assert_less(
                yi,
                tf.constant(num_classes, tf.int64),
                message=f"{where}: labels must lie in [0, {num_classes})",
            )
        )
        with tf.control_dependencies(deps):
            targets = tf.nest.map_structure(tf.identity, targets)
        return (x, targets) + tuple(element[2:])

    return ds.map(check)


def arrays_to_dataset(x, y, sample_weight, batch_size, shuffle, seed):
    """Batches array inputs into a tf.data pipeline."""
    y = (
        {k: np.asarray(v) for k, v in y.items()}
        if isinstance(y, dict)
        else np.asarray(y)
    )
    tensors = (x, y) + (
        () if sample_weight is None else (np.asarray(sample_weight),)
    )
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        n = len(y[LABEL]) if isinstance(y, dict) else len(y)
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def as_dataset(
    data, modalities, num_classes, batch_size, where, regression_targets=None
):
    """A checked dataset from a dataset or an `(inputs, labels[, sw])`
    tuple of arrays (`validation_data`, held-out data)."""
    if isinstance(data, tf.data.Dataset):
        return check_dataset(
            data, modalities, num_classes, where, regression_targets
        )
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        x, y = data[0], data[1]
        check_arrays(x, y, modalities, num_classes, where, regression_targets)
        y = normalize_targets(y, regression_targets, where)
        sw = data[2] if len(data) == 3 else None
        n = len(data[0][modalities[0]])
        return arrays_to_dataset(x, y, sw, min(batch_size, n), False, 0)
    raise TypeError(
        f"{where} must be a tf.data.Dataset or an (inputs, labels) "
        f"tuple; got {type(data).__name__}."
    )


def is_arrays(x):
    """Whether `x` is a structure of arrays or tensors (what Keras' array
    adapter takes), as opposed to a dataset, a `PyDataset`, a generator or
    a `DataLoader`."""
    from keras.src.trainers.data_adapters import array_data_adapter

    if x is None or isinstance(x, tf.data.Dataset):
        return False
    return array_data_adapter.can_convert_arrays(x)


def inputs_as_dict(x, modalities, where):
    """A list or tuple of per-modality arrays, in the encoders' order, as
    the dict the model takes; anything else is returned unchanged."""
    if not isinstance(x, (list, tuple)) or not x or not is_arrays(list(x)):
        return x
    if len(x) != len(modalities):
        raise ValueError(
            f"{where}: a list of inputs needs one array per modality, in "
            f"the encoders' order {list(modalities)}; got {len(x)} arrays."
        )
    return dict(zip(modalities, x))
