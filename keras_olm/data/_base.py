"""Shared machinery of the dataset readers."""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from keras_olm.data.errors import DataError
from keras_olm.data.errors import SkipReport
from keras_olm.data.errors import check_on_error
from keras_olm.data.errors import decode_records
from keras_olm.data.errors import logger
from keras_olm.data.image import diagnose_files

SEPARATOR = "\n"

# Bumped whenever what a reader caches changes, so that older cache files
# are not read back.
CACHE_FORMAT = 1


def check_cache(cache):
    """Validates a reader's `cache` argument; returns it (a dir made absolute).

    Args:
        cache: None, `"memory"`, or a directory (str or path); the directory
            is created if missing.

    Returns:
        None, `"memory"` or the absolute directory path.
    """
    if cache is None or cache == "memory":
        return cache
    if not isinstance(cache, (str, os.PathLike)):
        raise ValueError(
            "`cache` must be None, 'memory' or a directory path; "
            f"received cache={cache!r}."
        )
    path = os.path.abspath(os.fspath(cache))
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(
            f"Cache directory {path} exists and is not a directory; pass "
            "cache=None, 'memory' or a directory path."
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the cache directory {path}: {e}. Pass "
            "cache=None, 'memory' or a writable directory."
        ) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(
            f"Cache directory {path} is not writable. Pass cache=None, "
            "'memory' or a writable directory."
        )
    return path


def _file_stamp(path):
    """`[path, size, mtime_ns]` of a file (None for both if it is missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def require_dir(path, what):
    """Raises `DataError` naming `path` unless it is a directory."""
    if not os.path.isdir(path):
        raise DataError(f"{what} not found: {path}")
    return path


def require_file(path, what):
    """Raises `DataError` naming `path` unless it is a file."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    return path


def list_frames(folder, extensions=(".jpg", ".jpeg", ".png")):
    """The sorted image files of a frame folder (full paths)."""
    names = sorted(
        n for n in os.listdir(folder) if n.lower().endswith(extensions)
    )
    return [os.path.join(folder, n) for n in names]


def hold_out(n, fraction, seed):
    """Splits `range(n)` into (train, held_out) index lists, deterministically.

    Args:
        n: int. Number of training samples.
        fraction: float. Fraction held out as `"held_out"` (at least one
            sample when `fraction > 0` and `n >= 2`).
        seed: int. The permutation seed.

    Returns:
        A tuple of two sorted lists of indices, disjoint, covering `range(n)`.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"`held_out_fraction` must be in [0, 1); got {fraction}."
        )
    n_held_out = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_held_out = min(max(n_held_out, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    held_out = sorted(perm[:n_held_out].tolist())
    train = sorted(perm[n_held_out:].tolist())
    return train, held_out


class Reader:
    """Base class of the readers: splits, validation, tf.data assembly.

    Subclasses set `name`, `class_names` and `modalities`, and implement
    `_official_split(split)` (a list of record dicts for the splits the
    dataset ships) and `_decode(record, training, seed)`.

    A record is a dict of Python values: file paths (str; several frame
    files joined by newlines), `"label"` (int) and optional extra targets.
    The splits are the dataset's own plus `"held_out"`: a fraction
    `held_out_fraction` of the official training split held out (by `seed`) for
    OLM's held-out losses; `"train"` is the rest, so the two are disjoint. The
    hold-out is a seeded permutation of the validated training records
    (with `on_error="skip"`, of those that passed the up-front checks).

    Args:
        root: str or path. The dataset root.
        held_out_fraction: float. Fraction of the training split held out as
            `"held_out"`. Defaults to `0.1`.
        seed: int. Seed of the hold-out. Defaults to `1337`.
        on_error: str. `"raise"` or `"skip"` (see `keras_olm.data.errors`).
            Defaults to `"raise"`.
        cache: None, `"memory"` or a directory. Keep the deterministic part
            of the decoding (see the subclass) after the first pass: in
            memory, or in files under the directory (tf.data's
            `Dataset.cache`), so later epochs skip it; random choices
            (frames, crops) are made after the cache and still differ per
            epoch. The files are named by `cache_key`, which changes with
            the reader's settings and the source files' paths, sizes and
            modification times. Defaults to `None` (decode every epoch).
    """

    name = "reader"
    class_names = ()
    modalities = ()
    official_splits = ("train", "test")
    file_keys = ()

    def __init__(
        self,
        root,
        held_out_fraction=0.1,
        seed=1337,
        on_error="raise",
        cache=None,
    ):
        self.root = os.fspath(root)
        require_dir(self.root, f"{self.name} root folder")
        self.held_out_fraction = float(held_out_fraction)
        self.seed = int(seed)
        self.on_error = check_on_error(on_error)
        self.cache = check_cache(cache)
        self._reports = {}
        self._cache = {}

    @property
    def num_classes(self):
        """The number of classes."""
        return len(self.class_names)

    @property
    def splits(self):
        """The split names accepted by `samples` and `as_dataset`."""
        return tuple(self.official_splits) + ("held_out",)

    def skip_report(self, split):
        """The `SkipReport` of a split (skips up front and while decoding).

        Args:
            split: str. A split name.

        Returns:
            `SkipReport`.
        """
        if split not in self._reports:
            self._reports[split] = SkipReport(f"{self.name}/{split}")
        return self._reports[split]

    def skip(self, split, path, reason):
        """Raises `DataError` naming `path`, or records a skip."""
        if self.on_error == "raise":
            raise DataError(
                f"{path}: {reason}. Pass on_error='skip' to skip such "
                "samples (they are counted and reported)."
            )
        self.skip_report(split).add(path, reason)

    def label_index(self, label, source):
        """Maps a class name to its index; unknown names raise `DataError`.

        Args:
            label: str. The class name as written in the split file.
            source: str. The file (and line) to name in the error.

        Returns:
            int.
        """
        try:
            return self._label_lookup[label]
        except AttributeError:
            self._label_lookup = {c: i for i, c in enumerate(self.class_names)}
            return self.label_index(label, source)
        except KeyError:
            raise DataError(
                f"{source}: unknown label {label!r}; expected one of "
                f"{list(self.class_names)}."
            ) from None

    def _official_split(self, split):
        raise NotImplementedError

    def samples(self, split):
        """The validated records of a split.

        Args:
            split: str. One of `self.splits`.

        Returns:
            list of dicts.
        """
        if split not in self.splits:
            raise ValueError(
                f"Unknown split {split!r} for {self.name}; "
                f"choose one of {self.splits}."
            )
        if split in ("train", "held_out"):
            key = ("train", "held_out")
            if key not in self._cache:
                full = self._official_split("train")
                train, held_out = hold_out(
                    len(full), self.held_out_fraction, self.seed
                )
                self._cache[key] = (
                    [full[i] for i in train],
                    [full[i] for i in held_out],
                )
            return self._cache[key][0 if split == "train" else 1]
        if split not in self._cache:
            self._cache[split] = self._official_split(split)
        return self._cache[split]

    def _decode(self, record, training, seed):
        """The inputs of one record, decoded (without a cache)."""
        return self._augment(
            self._decode_fixed(record, training), training, seed
        )

    def _decode_fixed(self, record, training):
        """The deterministic part of `_decode`: what `cache` keeps.

        Returns the same structure for every record (shapes may vary).
        """
        raise NotImplementedError

    def _augment(self, fixed, training, seed):
        """The random rest of `_decode`, applied to `_decode_fixed`'s
        output after the cache; `_augment(_decode_fixed(r, t), t, s)`
        equals `_decode(r, t, s)`."""
        return fixed

    def _cache_settings(self):
        """The settings `_decode_fixed` depends on (JSON-able), for the
        cache key."""
        return {}

    def cache_key(self, split, training=None):
        """The key of a split's cache files: a hex digest of what they hold.

        It changes with the reader's class, its decoding settings (preset,
        sample rate, image size, normalization, ...), the split, the
        training mode and every record: its fields, and the path, size and
        modification time of each of its files.

        Args:
            split: str. A split name.
            training: bool or None. Defaults to `None`: True for `"train"`
                only, as in `as_dataset`.

        Returns:
            str. 64 hex digits.
        """
        if training is None:
            training = split == "train"
        records = self.samples(split)
        stamps = []
        for record in records:
            files = [
                _file_stamp(path)
                for k in self.file_keys
                if k in record
                for path in record[k].split(SEPARATOR)
            ]
            stamps.append([record, files])
        payload = {
            "format": CACHE_FORMAT,
            "reader": f"{type(self).__module__}.{type(self).__qualname__}",
            "settings": self._cache_settings(),
            "split": split,
            "training": bool(training),
            "on_error": self.on_error,
            "records": stamps,
        }
        text = json.dumps(payload, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def cache_path(self, split, training=None):
        """The file prefix of a split's disk cache (None unless `cache` is a
        directory): `<cache>/<name>-<split>-<train|eval>-<key>`."""
        if self.cache in (None, "memory"):
            return None
        if training is None:
            training = split == "train"
        mode = "train" if training else "eval"
        key = self.cache_key(split, training)[:24]
        return os.path.join(self.cache, f"{self.name}-{split}-{mode}-{key}")

    def _diagnose(self, paths):
        """Which of a record's files failed to load, and why (called in
        Python after a failure; see `decode_records`).

        Args:
            paths: str. The record's files (`file_keys`), joined by
                newlines.

        Returns:
            A tuple `(file, reason)`.
        """
        return diagnose_files(paths)

    def _post_batch(self, inputs):
        """Transforms decoded inputs after batching (or per sample)."""
        return inputs

    def _post_batch_element(self, inputs, target):
        return self._post_batch(inputs), target

    def _target(self, record):
        return record["label"]

    def as_dataset(
        self,
        split="train",
        batch_size=32,
        shuffle=None,
        seed=None,
        training=None,
        drop_remainder=False,
        prefetch=True,
    ):
        """Builds the `tf.data.Dataset` of a split.

        Elements are `({modality: tensor}, label)`; decoding runs in a
        parallel map (`tf.data.AUTOTUNE`), followed by batching and
        prefetching.

        Args:
            split: str. `"train"`, `"held_out"`, `"test"` (or another split of
                `self.splits`). Defaults to `"train"`.
            batch_size: int or None. `None` yields single samples. Defaults
                to `32`.
            shuffle: bool or None. Shuffle the samples each epoch. Defaults
                to `None`: shuffle the `"train"` split only.
            seed: int or None. Seed of the shuffle and of the random frame
                or crop choices (deterministic given the seed). Defaults to
                `None`.
            training: bool or None. Random frames/crops (True) or fixed
                ones (False). Defaults to `None`: True for `"train"` only.
            drop_remainder: bool. Drop the last partial batch. Defaults to
                `False`.
            prefetch: bool. Prefetch with `tf.data.AUTOTUNE`. Defaults to
                `True`.

        Returns:
            `tf.data.Dataset`.

        Example:

        ```python
        train = reader.as_dataset("train", batch_size=32, seed=0)
        # Held out of the official training split:
        held_out = reader.as_dataset("held_out", batch_size=32)
        test = reader.as_dataset("test", batch_size=32)
        ```
        """
        records = self.samples(split)
        if not records:
            raise DataError(
                f"The {split!r} split of {self.name} at {self.root} is empty."
            )
        if shuffle is None:
            shuffle = split == "train"
        if training is None:
            training = split == "train"
        ds = self._records_dataset(records, split, training, seed, shuffle)
        if batch_size is not None:
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if type(self)._post_batch is not Reader._post_batch:
            ds = ds.map(
                self._post_batch_element, num_parallel_calls=tf.data.AUTOTUNE
            )
        if prefetch:
            ds = ds.prefetch(tf.data.AUTOTUNE)
        return ds

    def _records_dataset(self, records, split, training, seed, shuffle):
        if self.cache is not None:
            return self._cached_dataset(records, split, training, seed, shuffle)
        columns = {k: [r[k] for r in records] for k in records[0]}
        file_keys = [k for k in self.file_keys if k in columns]

        def decode(record, item_seed):
            inputs = self._decode(record, training, item_seed)
            return inputs, self._target(record)

        def paths(record):
            return tf.strings.reduce_join(
                tf.stack([record[k] for k in file_keys]), separator=SEPARATOR
            )

        ds = decode_records(
            columns,
            decode,
            paths,
            self._diagnose,
            self.on_error,
            self.skip_report(split),
            shuffle=shuffle,
            seed=seed,
        )
        if self.on_error == "raise":
            # Nothing is dropped: let Keras know the epoch length.
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(records)))
        return ds

    def _cached_dataset(self, records, split, training, seed, shuffle):
        """`_records_dataset` with `_decode_fixed` cached (see `cache`).

        The fixed part is decoded in record order by `decode_records` (the
        same error policy), cached with `Dataset.cache`, then shuffled in
        memory (a buffer of the whole split, reshuffled every pass) and
        given `_augment` with the seeds the uncached pipeline uses: one
        random number a pass (from `seed`) and the record's index. Without
        shuffling, the samples equal the uncached pipeline's, pass by pass.
        """
        columns = {k: [r[k] for r in records] for k in records[0]}
        columns["_index"] = np.arange(len(records), dtype=np.int64)
        file_keys = [k for k in self.file_keys if k in columns]

        def fixed(record, item_seed):
            value = self._decode_fixed(record, training)
            return record["_index"], value, self._target(record)

        def paths(record):
            return tf.strings.reduce_join(
                tf.stack([record[k] for k in file_keys]), separator=SEPARATOR
            )

        ds = decode_records(
            columns,
            fixed,
            paths,
            self._diagnose,
            self.on_error,
            self.skip_report(split),
            shuffle=False,
        )
        filename = self.cache_path(split, training) or ""
        if filename:
            _remove_stale_lock(filename)
        ds = ds.cache(filename)
        if shuffle:
            ds = ds.shuffle(
                len(records), seed=seed, reshuffle_each_iteration=True
            )
        # One random number a pass, as `decode_records` draws it.
        rands = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        )
        per_pass = rands.take(1).flat_map(
            lambda r: tf.data.Dataset.from_tensors(r).repeat()
        )

        def augment(item, rand):
            index, value, target = item
            item_seed = tf.cast(tf.stack([rand, index]) % (2**31 - 1), tf.int32)
            return self._augment(value, training, item_seed), target

        ds = tf.data.Dataset.zip((ds, per_pass)).map(
            augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if self.on_error == "raise":
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(records)))
        return ds

    def __repr__(self):
        return (
            f"{type(self).__name__}(root={self.root!r}, "
            f"num_classes={self.num_classes})"
        )


def _remove_stale_lock(filename):
    """Removes the lock file of a disk cache that an interrupted run left.

    `Dataset.cache` writes `<filename>_0.lockfile` while it fills the cache
    and `<filename>.index` when it completes it; a lock file without an
    index is left by a run that stopped in its first pass, and would make
    every later run fail. (Two runs filling the same cache at once are not
    supported.)
    """
    lock = f"{filename}_0.lockfile"
    if os.path.exists(lock) and not os.path.exists(f"{filename}.index"):
        logger.warning("Removing a stale cache lock file: %s", lock)
        try:
            os.remove(lock)
        except OSError:
            pass


def log_kept(name, kept, dropped, why):
    """Logs how many samples a protocol filter dropped (never silently)."""
    if dropped:
        logger.info(
            "[%s] kept %d samples; dropped %d %s.", name, kept, dropped, why
        )
