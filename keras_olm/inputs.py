"""Input checks that need nothing of the model, and array pipelines.

`keras_olm.input_plan.InputPlan` checks inputs against a model (its
modalities, classes, regression targets and built shapes); the checks and
helpers here read the data alone. Everything here is tf.data, which
keras-olm uses as its input pipeline on every Keras backend.
"""

import numpy as np
import tensorflow as tf

#: Key of the class labels in a dict of targets (models with regression
#: heads take `{"label": class ids, <regression name>: values}`).
LABEL = "label"


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
    finite, non-negative weight per sample.

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
    values = np.asarray(sample_weight)
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: `sample_weight` must be real numbers; got dtype "
            f"{values.dtype}."
        )
    if not values.size:
        return
    values = values.reshape(num_samples, -1).astype("float64")
    bad = ~(np.isfinite(values) & (values >= 0)).all(axis=1)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"{where}: `sample_weight` must be finite and non-negative; "
            f"sample {index} has weight {values[index].tolist()} "
            f"({int(bad.sum())} such samples in all)."
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


def is_arrays(x):
    """Whether `x` is a structure of arrays or tensors (what Keras' array
    adapter takes), as opposed to a dataset, a `PyDataset`, a generator or
    a `DataLoader`."""
    from keras.src.trainers.data_adapters import array_data_adapter

    if x is None or isinstance(x, tf.data.Dataset):
        return False
    return array_data_adapter.can_convert_arrays(x)
