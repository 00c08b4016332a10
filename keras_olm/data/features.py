"""Readers of pre-extracted feature arrays: MER-MULTI and SUN RGB-D
features (e.g. Places-CNN), held in memory.
"""

import csv
import os

import numpy as np
import tensorflow as tf

from keras_olm.data._base import Reader
from keras_olm.data._base import require_file
from keras_olm.data.errors import DataError
from keras_olm.data.sunrgbd import SUNRGBD_CLASSES

MER_CLASSES = ("happiness", "neutral", "anger", "sadness", "worry", "surprise")


def _load_array(path, key=None):
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if key not in z:
                raise DataError(
                    f"{path}: no array {key!r} (has {sorted(z.files)})."
                )
            return z[key]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e}).") from e


def _pad(arrays, max_len, source):
    """Stacks (D,) or (T, D) arrays; sequences padded/cut to `max_len`."""
    first = arrays[0]
    for a, (name, _) in zip(arrays, source, strict=True):
        if a.ndim != first.ndim or a.shape[1:] != first.shape[1:]:
            raise DataError(
                f"{name}: feature shape {a.shape} differs from "
                f"{first.shape} of {source[0][0]}."
            )
    if first.ndim == 1:
        return np.stack(arrays).astype(np.float32)
    length = max_len or max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), length) + first.shape[1:], np.float32)
    for i, a in enumerate(arrays):
        n = min(length, a.shape[0])
        out[i, :n] = a[:n]
    return out


class FeatureReader(Reader):
    """Base of the readers of in-memory feature arrays.

    Subclasses implement `_official_split(split)` returning a list of
    records `{modality: array, "label": ..., ...}`.
    """

    file_keys = ()

    def _records_dataset(self, records, split, training, seed, shuffle):
        columns = {}
        for key in records[0]:
            values = [r[key] for r in records]
            if key in self.modalities:
                columns[key] = np.stack(values).astype(np.float32)
            else:
                columns[key] = np.asarray(values)
        inputs = {m: columns[m] for m in self.modalities}
        ds = tf.data.Dataset.from_tensor_slices(
            (inputs, self._target_columns(columns))
        )
        if shuffle:
            ds = ds.shuffle(
                len(records), seed=seed, reshuffle_each_iteration=True
            )
        return ds

    def _target_columns(self, columns):
        return columns["label"].astype(np.int32)


class SunRGBDFeatures(FeatureReader):
    """SUN RGB-D as pre-extracted features (e.g. Places-CNN for RGB and D).

    Layout (either form, per split `train` and `test`):

    ```
    <root>/<split>.npz            arrays "rgb", "depth" (N, ...) and
                                  "label" (N,): int in 0..18 or class names
    <root>/<split>_rgb.npy, <split>_depth.npy, <split>_label.npy
    ```

    Yields `({"rgb": float32, "depth": float32}, label)`.

    Args:
        root: str or path. The features folder.
        modalities: tuple of str. Array names. Defaults to
            `("rgb", "depth")`.
        held_out_fraction: float. Defaults to `0.1`.
        seed: int. Defaults to `1337`.

    Example:

    ```python
    reader = SunRGBDFeatures("/data/sunrgbd_places_features")
    train = reader.as_dataset("train", batch_size=128)
    ```
    """

    name = "sunrgbd_features"
    class_names = SUNRGBD_CLASSES

    def __init__(
        self,
        root,
        modalities=("rgb", "depth"),
        held_out_fraction=0.1,
        seed=1337,
    ):
        super().__init__(root, held_out_fraction, seed)
        self.modalities = tuple(modalities)
        for split in self.official_splits:
            self._source(split, "label")  # Validates up front.

    def _source(self, split, key):
        npz = os.path.join(self.root, f"{split}.npz")
        if os.path.isfile(npz):
            return npz, key
        npy = os.path.join(self.root, f"{split}_{key}.npy")
        if os.path.isfile(npy):
            return npy, None
        raise DataError(
            f"SUN RGB-D features for {split!r} not found: neither {npz} nor "
            f"{npy}."
        )

    def _official_split(self, split):
        arrays = {}
        for key in self.modalities + ("label",):
            path, name = self._source(split, key)
            arrays[key] = _load_array(path, name)
        n = len(arrays["label"])
        for m in self.modalities:
            if len(arrays[m]) != n:
                raise DataError(
                    f"{self._source(split, m)[0]}: {len(arrays[m])} rows of "
                    f"{m!r} but {n} labels."
                )
        source = self._source(split, "label")[0]
        labels = arrays["label"]
        if labels.dtype.kind in "US":
            labels = [self.label_index(str(x), source) for x in labels]
        else:
            labels = labels.astype(np.int64)
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise DataError(
                    f"{source}: label {labels[bad][0]} outside "
                    f"0..{self.num_classes - 1}."
                )
        return [
            {**{m: arrays[m][i] for m in self.modalities}, "label": int(y)}
            for i, y in enumerate(labels)
        ]


class MerMulti(FeatureReader):
    """MER-MULTI (MER 2023): feature sequences, 6 emotions + valence.

    Two layouts are accepted, per split (`train`, `test`):

    ```
    (a) <root>/<split>.npz        one array per modality, (N, D) or
                                  (N, T, D); "emotion" (N,) int 0..5 or
                                  names; "valence" (N,) float in [-5, 5]
    (b) <root>/<split>-label.csv  header "name,discrete,valence", then one
                                  row per clip (discrete: an emotion name)
        <root>/features/<modality>/<name>.npy   (D,) or (T, D) per clip
    ```

    Emotions: happiness, neutral, anger, sadness, worry, surprise (0..5).
    Sequences of different lengths are zero-padded (or cut) to `max_len`
    (default: the longest in the split; set it so that train and test
    agree). The target is the emotion index (`target="emotion"`), the
    valence (`"valence"`), or `{"label": int, "valence": float}`
    (`"both"`: the keys `BalancedMultimodalModel` reads with
    `regression_targets={"valence": 1}`).

    Args:
        root: str or path. The dataset folder.
        modalities: tuple of str. Defaults to `("audio", "text", "video")`.
        target: str. `"emotion"`, `"valence"` or `"both"`. Defaults to
            `"emotion"`.
        max_len: int or None. Sequence length. Defaults to `None`.
        held_out_fraction: float. Defaults to `0.1`.
        seed: int. Defaults to `1337`.

    Example:

    ```python
    reader = MerMulti("/data/mer2023", target="both", max_len=64)
    ds = reader.as_dataset("train", batch_size=32)
    ```
    """

    name = "mer_multi"
    class_names = MER_CLASSES

    def __init__(
        self,
        root,
        modalities=("audio", "text", "video"),
        target="emotion",
        max_len=None,
        held_out_fraction=0.1,
        seed=1337,
    ):
        super().__init__(root, held_out_fraction, seed)
        if target not in ("emotion", "valence", "both"):
            raise ValueError(
                "`target` must be 'emotion', 'valence' or 'both'; "
                f"received target={target!r}."
            )
        self.modalities = tuple(modalities)
        self.target = target
        self.max_len = max_len
        for split in self.official_splits:
            self._split_source(split)

    def _split_source(self, split):
        npz = os.path.join(self.root, f"{split}.npz")
        if os.path.isfile(npz):
            return npz
        csv_path = os.path.join(self.root, f"{split}-label.csv")
        if os.path.isfile(csv_path):
            return csv_path
        raise DataError(
            f"MER-MULTI {split!r} split not found: neither {npz} nor "
            f"{csv_path}."
        )

    def _emotion(self, value, source):
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            return self.label_index(value.strip().lower(), source)
        index = int(value)
        if not 0 <= index < self.num_classes:
            raise DataError(f"{source}: emotion {index} outside 0..5.")
        return index

    def _valence(self, value, source):
        try:
            v = float(value)
        except ValueError:
            raise DataError(f"{source}: bad valence {value!r}.") from None
        if not -5.0 <= v <= 5.0:
            raise DataError(f"{source}: valence {v} outside [-5, 5].")
        return v

    def _official_split(self, split):
        source = self._split_source(split)
        if source.endswith(".npz"):
            feats = {m: _load_array(source, m) for m in self.modalities}
            emotions = _load_array(source, "emotion")
            valences = _load_array(source, "valence")
            n = len(emotions)
            for m, a in feats.items():
                if len(a) != n or len(valences) != n:
                    raise DataError(f"{source}: {m!r} has {len(a)} rows, {n}.")
            rows = [
                (f"{source}[{i}]", emotions[i].item(), valences[i].item())
                for i in range(n)
            ]
            per_clip = {
                m: [(f"{source}[{m}][{i}]", a[i]) for i in range(n)]
                for m, a in feats.items()
            }
        else:
            rows, per_clip = self._read_clips(source)
        features = {
            m: _pad([a for _, a in per_clip[m]], self.max_len, per_clip[m])
            for m in self.modalities
        }
        records = []
        for i, (where, emotion, valence) in enumerate(rows):
            record = {m: features[m][i] for m in self.modalities}
            record["label"] = self._emotion(emotion, where)
            record["valence"] = self._valence(valence, where)
            records.append(record)
        return records

    def _read_clips(self, source):
        with open(source, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        if not table or [c.strip() for c in table[0][:3]] != [
            "name",
            "discrete",
            "valence",
        ]:
            raise DataError(
                f"{source}: expected the header 'name,discrete,valence'."
            )
        rows, per_clip = [], {m: [] for m in self.modalities}
        for line, row in enumerate(table[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            where = f"{source}:{line}"
            if len(row) < 3:
                raise DataError(f"{where}: expected 'name,discrete,valence'.")
            name = row[0].strip()
            rows.append((where, row[1].strip(), row[2].strip()))
            for m in self.modalities:
                path = os.path.join(self.root, "features", m, f"{name}.npy")
                require_file(path, f"{m} features of {name} ({where})")
                per_clip[m].append((path, _load_array(path)))
        if not rows:
            raise DataError(f"{source}: no clips listed.")
        return rows, per_clip

    def _target_columns(self, columns):
        emotion = columns["label"].astype(np.int32)
        valence = columns["valence"].astype(np.float32)
        if self.target == "emotion":
            return emotion
        if self.target == "valence":
            return valence
        # The keys of `keras_olm.inputs` ("label" for the classes).
        return {"label": emotion, "valence": valence}
