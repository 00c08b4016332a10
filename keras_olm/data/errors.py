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


def _whole(fn):
    """Lets `fn(element)` take a tuple element that tf.data unpacks."""

    def call(*args):
        return fn(args[0] if len(args) == 1 else args)

    return call


def _zeros_for_spec(spec):
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, dtype=spec.dtype)


def guarded_map(
    dataset, fn, path_fn, diagnose, on_error, report, chunk_size=16
):
    """Maps `fn` over `dataset`, turning any op error into a named error.

    Elements are decoded in chunks of `chunk_size`, each chunk in its own
    small dataset: a parallel map followed by `ignore_errors()`. A scan
    over the chunk's results notices any element that did not come out
    (its decode failed: a corrupt file, a missing one, an empty clip) and
    calls `diagnose` in Python on that element's files, only then. Under
    `on_error="raise"` a `DataError` naming the file stops the pipeline;
    under `"skip"` the element is dropped and counted in `report`, and the
    report is logged each time a pass over the data ends. The output keeps
    the input order.

    Args:
        dataset: `tf.data.Dataset`. The input elements.
        fn: callable. Maps one element to the decoded output structure.
        path_fn: callable. Maps one element to a scalar string tensor: the
            element's files, joined by newlines.
        diagnose: callable. `diagnose(paths: str) -> (file, reason)`: which
            file failed and why; called in Python only after a failure.
        on_error: str. `"raise"` or `"skip"`.
        report: `SkipReport`. Where skips are counted.
        chunk_size: int. Elements per chunk. Defaults to `16`.

    Returns:
        A `tf.data.Dataset` of `fn`'s outputs, in the input order.
    """
    check_on_error(on_error)
    fn, path_fn = _whole(fn), _whole(path_fn)

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

    def with_paths(*element):
        element = element[0] if len(element) == 1 else element
        return element, path_fn(element)

    @_whole
    def decode_chunk(chunk):
        elements, paths = chunk
        n = tf.shape(paths)[0]
        indexed = tf.data.Dataset.from_tensor_slices((elements, tf.range(n)))
        decoded = indexed.map(
            lambda element, i: (fn(element), i),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).ignore_errors()
        out_spec = decoded.element_spec[0]
        end = tf.data.Dataset.from_tensors(
            (tf.nest.map_structure(_zeros_for_spec, out_spec), n)
        )

        def check(expected, item):
            value, i = item

            def report_missing():
                ok = tf.numpy_function(
                    on_failures, [paths[expected:i]], tf.bool, stateful=True
                )
                return tf.reshape(ok, [])

            checked = tf.cond(
                i > expected, report_missing, lambda: tf.constant(True)
            )
            with tf.control_dependencies([checked]):
                keep = tf.logical_and(i < n, checked)
            return i + 1, (value, keep)

        return decoded.concatenate(end).scan(tf.constant(0), check)

    out = (
        dataset.map(with_paths)
        .batch(chunk_size)
        .interleave(
            decode_chunk,
            cycle_length=2,
            block_length=chunk_size,
            num_parallel_calls=2,
            deterministic=True,
        )
    )
    out = out.filter(_second).map(_first)
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
