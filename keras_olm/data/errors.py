"""Error policy for the input pipelines: clear errors, or counted skips.

Every reader and pipeline in `keras_olm.data` takes an `on_error` argument:

- `"raise"` (the default): a missing or unreadable file stops the pipeline
  with an error whose message names the file.
- `"skip"`: the sample is dropped, the drop is counted in a `SkipReport`
  with the file and the reason, a warning names the file, and a summary
  line is logged each time a pass over the data ends.

A sample is never dropped silently and never given another sample's label.
"""

import logging
import threading

import numpy as np
import tensorflow as tf

logger = logging.getLogger("keras_olm.data")

ON_ERROR_POLICIES = ("raise", "skip")


class DataError(ValueError):
    """A dataset file or layout is missing, corrupt or inconsistent.

    The message always names the offending file or folder.
    """


def check_on_error(on_error):
    """Validates an `on_error` policy name and returns it."""
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(
            f"`on_error` must be one of {ON_ERROR_POLICIES}; "
            f"received on_error={on_error!r}."
        )
    return on_error


class SkipReport:
    """Counts and describes the samples skipped under `on_error="skip"`.

    Skips found while validating a layout up front (a missing file, an
    empty frame folder) are added when a split is first listed; skips found
    while decoding (a corrupt WAV or JPEG) are added as the pipeline runs.
    Each file is counted once, however many epochs meet it again.

    Args:
        name: str. A name for the report, used in log lines. Defaults to
            `"data"`.

    Example:

    ```python
    report = SkipReport("cremad/train")
    report.add("/data/AudioWAV/1001_DFA_ANG_XX.wav", "not a WAV file")
    print(report.count)  # 1
    print(report.summary())
    ```
    """

    def __init__(self, name="data"):
        self.name = name
        self._lock = threading.Lock()
        self._entries = []
        self._seen = set()

    def add(self, path, reason):
        """Records one skipped sample.

        Args:
            path: str. The file or folder that caused the skip.
            reason: str. Why the sample was skipped.
        """
        with self._lock:
            if str(path) in self._seen:
                return  # Already counted on an earlier pass (epoch).
            self._seen.add(str(path))
            self._entries.append((str(path), str(reason)))
        logger.warning("[%s] skipped %s: %s", self.name, path, reason)

    @property
    def count(self):
        """The number of skips recorded so far."""
        with self._lock:
            return len(self._entries)

    @property
    def entries(self):
        """A list of `(path, reason)` tuples, one per skip."""
        with self._lock:
            return list(self._entries)

    @property
    def paths(self):
        """The paths of the skipped samples."""
        return [path for path, _ in self.entries]

    def summary(self):
        """Returns a one-line summary of the skips.

        Returns:
            str. E.g. `"[cremad/train] 2 sample(s) skipped: a.wav (...)"`.
        """
        entries = self.entries
        if not entries:
            return f"[{self.name}] 0 samples skipped."
        shown = "; ".join(f"{p} ({r})" for p, r in entries[:5])
        more = f"; ... {len(entries) - 5} more" if len(entries) > 5 else ""
        return f"[{self.name}] {len(entries)} sample(s) skipped: {shown}{more}"

    def log(self):
        """Logs the summary line at WARNING level (INFO when empty)."""
        level = logging.WARNING if self.count else logging.INFO
        logger.log(level, "%s", self.summary())

    def __repr__(self):
        return f"SkipReport(name={self.name!r}, count={self.count})"


def as_str(value):
    """Converts a path from `tf.numpy_function` (bytes, 0-d array) to str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)


def _first(value, flag):
    return value


def _second(value, flag):
    return flag


def _zeros_for_spec(spec):
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, dtype=spec.dtype)


def decode_records(
    columns,
    fn,
    path_fn,
    diagnose,
    on_error,
    report,
    shuffle=False,
    seed=None,
):
    """Decodes records in a parallel map, naming the file of any failure.

    Each pass draws one random number (from `seed`); with `shuffle` it sets
    the pass's permutation of the records, and it seeds every record's
    random choices (frames, crops), so passes differ and a seed repeats
    them. The decode runs in one parallel map followed by
    `ignore_errors()`; a scan over the surviving positions notices any
    record that did not come out (a corrupt file, a missing one, an empty
    clip), recomputes which record sat there from the pass's permutation,
    and calls `diagnose` in Python on its files, only then. Under
    `on_error="raise"` a `DataError` naming the file stops the pipeline;
    under `"skip"` the record is dropped and counted in `report`, and the
    report is logged each time a pass ends.

    Args:
        columns: dict from field name to a list or array with one entry per
            record.
        fn: callable. `fn(record, seed)` maps a dict of scalar tensors and
            an int32 `(2,)` stateless seed to the output structure.
        path_fn: callable. Maps a record to a scalar string tensor: the
            record's files, joined by newlines.
        diagnose: callable. `diagnose(paths: str) -> (file, reason)`: which
            file failed and why; called in Python only after a failure.
        on_error: str. `"raise"` or `"skip"`.
        report: `SkipReport`. Where skips are counted.
        shuffle: bool. Reshuffle the records every pass. Defaults to
            `False`.
        seed: int or None. Defaults to `None` (not repeatable).

    Returns:
        A `tf.data.Dataset` of `fn`'s outputs.
    """
    check_on_error(on_error)
    tensors = {k: tf.constant(v) for k, v in columns.items()}
    n = int(next(iter(tensors.values())).shape[0])

    def permutation(pass_seed):
        if not shuffle:
            return tf.range(n, dtype=tf.int64)
        return tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=pass_seed
        )

    def one_pass(rand):
        pass_seed = tf.stack([rand, tf.constant(0, tf.int64)])
        # Position n is a sentinel that reports failures at the end.
        positions = tf.range(n + 1, dtype=tf.int64)
        order = tf.concat([permutation(pass_seed), [0]], axis=0)
        seeds = tf.fill([n + 1], rand)
        return tf.data.Dataset.from_tensor_slices((positions, order, seeds))

    out_spec = []

    def decode(position, index, rand):
        record = {k: t[index] for k, t in tensors.items()}
        item_seed = tf.cast(tf.stack([rand, index]) % (2**31 - 1), tf.int32)

        def real():
            value = fn(record, item_seed)
            out_spec.append(
                tf.nest.map_structure(tf.TensorSpec.from_tensor, value)
            )
            return value

        def sentinel():
            return tf.nest.map_structure(_zeros_for_spec, out_spec[-1])

        value = tf.cond(position < n, real, sentinel)
        return position, rand, value

    def on_failures(paths):
        for path in np.asarray(paths).reshape(-1):
            path = as_str(path)
            try:
                bad_file, reason = diagnose(path)
            except Exception as e:  # The diagnosis must not hide the path.
                bad_file, reason = path, f"{type(e).__name__}: {e}"
            if on_error == "raise":
                raise DataError(
                    f"Could not load {bad_file}: {reason}. Pass "
                    "on_error='skip' to skip such samples (they are counted "
                    "and reported)."
                )
            report.add(bad_file, reason)
        return np.bool_(True)

    def check(expected, item):
        position, rand, value = item

        def report_missing():
            pass_seed = tf.stack([rand, tf.constant(0, tf.int64)])
            lost = tf.gather(
                permutation(pass_seed), tf.range(expected, position)
            )
            paths = tf.map_fn(
                lambda i: path_fn({k: t[i] for k, t in tensors.items()}),
                lost,
                fn_output_signature=tf.string,
            )
            ok = tf.numpy_function(on_failures, [paths], tf.bool, stateful=True)
            return tf.reshape(ok, [])

        checked = tf.cond(
            position > expected, report_missing, lambda: tf.constant(True)
        )
        with tf.control_dependencies([checked]):
            keep = tf.logical_and(position < n, checked)
        return position + 1, (value, keep)

    rands = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    out = (
        rands.take(1)
        .flat_map(one_pass)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .scan(tf.constant(0, tf.int64), check)
        .filter(_second)
        .map(_first)
    )
    if on_error == "skip":
        out = _log_at_end(out, report)
    return out


def _log_at_end(dataset, report):
    """Appends an empty tail that logs `report` when a pass ends."""

    def log_summary():
        report.log()
        return np.bool_(False)

    def tail(_):
        flag = tf.numpy_function(log_summary, [], tf.bool, stateful=True)
        flag.set_shape([])
        zeros = tf.nest.map_structure(_zeros_for_spec, dataset.element_spec)
        return zeros, flag

    end = tf.data.Dataset.range(1).map(tail)
    end = end.filter(_second).map(_first)
    return dataset.concatenate(end)
