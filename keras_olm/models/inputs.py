"""Input glue for `BalancedMultimodalModel.fit`: checks, splits, dev slots.

Everything here is tf.data, which keras-olm uses as its input pipeline on
every Keras backend. Bad input is caught here, before a training step can
touch any state, with an error that names the modality or labels at fault.
"""

import numpy as np
import tensorflow as tf

_GOLDEN = 2654435761  # Knuth's multiplicative hash constant.

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
    if y is not None:
        check_label_values(y, num_classes, where)


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


def split_target_arrays(y, regression_targets, where):
    """`(labels, {name: float32 (n, width)})` from array targets, checked."""
    if not regression_targets:
        if isinstance(y, dict):
            raise ValueError(
                f"{where}: this model has no regression heads, so the "
                "labels must be an array of class ids, not a dict with keys "
                f"{sorted(y)}."
            )
        return np.asarray(y), {}
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
    return np.asarray(y[LABEL]), targets


def normalize_targets(y, regression_targets, where):
    """Array targets as fit feeds them: labels, or a dict with `(n, w)`."""
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


def check_dataset(ds, modalities, num_classes, where, regression_targets=None):
    """Adds in-pipeline checks to a dataset of `(x, y[, sw])` batches."""
    check_dataset_spec(ds.element_spec, modalities, where, regression_targets)

    def check(*element):
        x, targets = element[0], element[1]
        y = targets[LABEL] if regression_targets else targets
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


def _num_samples(y):
    return len(y[LABEL]) if isinstance(y, dict) else len(y)


def _take_targets(y, idx):
    if isinstance(y, dict):
        return {k: np.asarray(v)[idx] for k, v in y.items()}
    return np.asarray(y)[idx]


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
        ds = ds.shuffle(
            _num_samples(y), seed=seed, reshuffle_each_iteration=True
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_arrays(x, y, sample_weight, fraction, seed):
    """Splits arrays into (train, held-out) by a seeded permutation."""
    n = _num_samples(y)
    n_dev = int(round(n * fraction))
    if not 0 < n_dev < n:
        raise ValueError(
            f"dev_split={fraction} leaves {n_dev} of {n} samples for the "
            "held-out losses; pick a fraction that holds out at least one "
            "sample and keeps at least one for training."
        )
    order = np.random.default_rng(seed).permutation(n)
    dev_idx, train_idx = np.sort(order[:n_dev]), np.sort(order[n_dev:])

    def take(idx):
        xs = {m: np.asarray(v)[idx] for m, v in x.items()}
        sw = None if sample_weight is None else np.asarray(sample_weight)[idx]
        return xs, _take_targets(y, idx), sw

    return take(train_idx), take(dev_idx)


def holdout_split(dataset, fraction=0.1, seed=0):
    """Splits an unbatched dataset into (train, held-out), by element index.

    Element i goes to the held-out part when a multiplicative hash of
    `(i, seed)` falls below `fraction`: the split is deterministic and the
    same on every pass, so it must be taken BEFORE any shuffling (a
    reshuffled stream would move samples between the parts). OLM reads its
    held-out losses from the second part; never use the test set for it.

    Args:
        dataset: `tf.data.Dataset`. Unbatched, in a fixed order.
        fraction: float in (0, 1). Share of elements held out. Defaults to
            `0.1`.
        seed: int. Changes which elements are held out. Defaults to `0`.

    Returns:
        `(train, heldout)`, two `tf.data.Dataset`s.

    Example:
    ```python
    ds = tf.data.Dataset.from_tensor_slices(({"a": xa, "v": xv}, y))
    train, dev = keras_olm.holdout_split(ds, 0.1)
    train = train.shuffle(1000).batch(64)
    dev = dev.batch(64)
    model.fit(train, dev_data=dev)
    ```
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    threshold = tf.constant(int(fraction * 2**32), tf.uint64)
    salt = tf.constant((seed * 0x9E3779B9) % 2**32, tf.uint64)

    def held_out(i):
        h = (tf.cast(i, tf.uint64) * _GOLDEN + salt) % (2**32)
        return h < threshold

    indexed = dataset.enumerate()
    heldout = indexed.filter(lambda i, *e: held_out(i))
    train = indexed.filter(lambda i, *e: tf.logical_not(held_out(i)))

    def drop_index(i, *e):
        return e[0] if len(e) == 1 else e

    return train.map(drop_index), heldout.map(drop_index)


def with_dev_slots(train, dev, slot_every):
    """Zips training batches with held-out slots.

    Every element becomes `(x, y, extras)` where `extras` holds the
    optional sample weights and, for the held-out data, `dev_x`, `dev_y`
    and `dev_flag`. With `slot_every` k > 1 only every k-th slot carries a
    real held-out batch; the others carry empty (0-sample) batches and
    `dev_flag` 0, and the training step skips the held-out forward pass
    for them.
    """
    dev = dev.map(lambda *e: (e[0], e[1], tf.constant(1.0)))
    if slot_every > 1:
        # The slots between two held-out batches carry empty (0-sample)
        # constants: nothing to produce per step, nothing to transfer.
        def empty(spec):
            inner = [1 if d is None else d for d in spec.shape[1:]]
            return tf.zeros([0, *inner], spec.dtype)

        blank = tf.data.Dataset.from_tensors(
            tf.nest.map_structure(empty, dev.element_spec[:2])
            + (tf.constant(0.0),)
        ).repeat(slot_every - 1)

        def expand(x, y, flag):
            real = tf.data.Dataset.from_tensors((x, y, flag))
            return real.concatenate(blank)

        slots = dev.flat_map(expand)
    else:
        slots = dev
    slots = slots.repeat()

    def join(batch, slot):
        extras = {"dev_x": slot[0], "dev_y": slot[1], "dev_flag": slot[2]}
        if len(batch) == 3:
            extras["sample_weight"] = batch[2]
        return batch[0], batch[1], extras

    joined = tf.data.Dataset.zip((train, slots)).map(join)
    steps = train.cardinality()
    if steps >= 0:
        # The infinite held-out stream hides the length from tf.data.
        joined = joined.apply(tf.data.experimental.assert_cardinality(steps))
    return joined.prefetch(tf.data.AUTOTUNE)
