"""SUN RGB-D scene classification (19 classes): images and depth maps."""

import os

import tensorflow as tf

from keras_olm.data._base import SEPARATOR
from keras_olm.data._base import Reader
from keras_olm.data._base import log_kept
from keras_olm.data._base import require_file
from keras_olm.data.errors import DataError
from keras_olm.data.image import SUNRGBD_MAX_DEPTH
from keras_olm.data.image import diagnose_depth_png
from keras_olm.data.image import diagnose_files
from keras_olm.data.image import diagnose_image
from keras_olm.data.image import image_size_pair
from keras_olm.data.image import load_image
from keras_olm.data.image import load_sunrgbd_depth

SUNRGBD_CLASSES = (
    "bathroom",
    "bedroom",
    "classroom",
    "computer_room",
    "conference_room",
    "corridor",
    "dining_area",
    "dining_room",
    "discussion_area",
    "furniture_store",
    "home_office",
    "kitchen",
    "lab",
    "lecture_theatre",
    "library",
    "living_room",
    "office",
    "rest_space",
    "study_space",
)

SENSORS = ("kv1", "kv2", "realsense", "xtion")


def _normalize_split_path(path):
    """A split entry as a path relative to the SUNRGBD folder."""
    path = str(path).strip().replace("\\", "/").rstrip("/")
    marker = "SUNRGBD/"
    if marker in path:
        path = path[path.rindex(marker) + len(marker) :]
    while path.startswith("./"):
        path = path[2:]
    return path


def read_split_file(path):
    """Reads a SUN RGB-D split file.

    Accepts the toolbox's `allsplit.mat` (MATLAB; cell arrays `alltrain`
    and `alltest` of absolute sample paths, read with `scipy.io.loadmat`)
    or a plain text file with one sample folder path a line (relative to
    the dataset root, or absolute with a `SUNRGBD/` component).

    Args:
        path: str. The split file.

    Returns:
        For a `.mat` file, a dict `{"train": [...], "test": [...]}`; for a
        text file, a list. Paths are relative to the SUNRGBD root.
    """
    require_file(path, "SUN RGB-D split file")
    if str(path).endswith(".mat"):
        from scipy import io as sio

        try:
            mat = sio.loadmat(path, squeeze_me=True)
        except Exception as e:
            raise DataError(f"{path}: not a readable MATLAB file ({e}).") from e
        out = {}
        for split, key in (("train", "alltrain"), ("test", "alltest")):
            if key not in mat:
                raise DataError(f"{path}: no '{key}' variable.")
            entries = [str(x) for x in list(mat[key].ravel())]
            out[split] = [_normalize_split_path(e) for e in entries]
        return out
    with open(path, encoding="utf-8") as f:
        return [_normalize_split_path(x) for x in f if x.strip()]


class SunRGBD(Reader):
    """SUN RGB-D (19 scene classes) read from its folder layout.

    Layout (the toolbox's):

    ```
    <root>/{kv1,kv2,realsense,xtion}/.../<sample>/
        image/<name>.jpg          RGB
        depth/<name>.png          uint16, bit-rotated millimetres
        depth_bfx/<name>.png      inpainted depth (optional)
        scene.txt                 the scene name, e.g. "bedroom"
    <root>/allsplit.mat           or train.txt + test.txt (see below)
    ```

    A sample folder is any folder under a sensor folder that holds
    `scene.txt` and an `image/` folder. The split is read from
    `split_file`: `allsplit.mat` (keys `alltrain`/`alltest`) or a dict
    `{"train": path, "test": path}` of text files listing sample folders.
    By default `<root>/allsplit.mat`, else `<root>/train.txt` and
    `<root>/test.txt`. A split entry with no sample folder is an error (or
    a counted skip with `on_error="skip"`). Samples whose scene is not one
    of the 19 classes are dropped, as the benchmark protocol does; the
    count is logged (INFO) and kept in `reader.dropped_scenes[split]`, and
    `unknown_scene="error"` makes them errors instead. A depth map that is
    not a 16-bit single-channel PNG (e.g. an 8-bit or RGB image) is an
    error naming the file.

    Yields `({"rgb": (h, w, 3), "depth": (h, w, depth_channels)}, label)`.

    Args:
        root: str or path. The SUNRGBD folder.
        split_file: str, dict or None. Defaults to `None` (see above).
        image_size: int or tuple `(height, width)`; an int is a square.
            Defaults to `(224, 224)`.
        normalize: str or None. RGB normalization (`"imagenet"`, `"unit"`,
            None). Defaults to `"imagenet"`.
        depth_normalize: str or None. `"max"` (metres / 8 m), `"standard"`
            (per-map z-score) or None (metres). Defaults to `"max"`.
        depth_channels: int. 1, or 3 to repeat depth for 3-channel
            encoders. Defaults to `1`.
        use_bfx: bool. Read the inpainted `depth_bfx/` maps. Defaults to
            `False`.
        unknown_scene: str. `"drop"` or `"error"`. Defaults to `"drop"`.
        held_out_fraction: float. Defaults to `0.1`.
        seed: int. Defaults to `1337`.
        on_error: str. `"raise"` or `"skip"`. Defaults to `"raise"`.
        cache: None, `"memory"` or a directory. Keep the decoded, resized,
            normalized images and depth maps after the first pass (in
            memory, or in `Dataset.cache` files under the directory, keyed
            by `cache_key`), so later epochs read them instead of decoding
            the JPEGs and PNGs again. Nothing here is random, so the whole
            decoding is cached; the shuffle still differs per epoch. It
            pays when a split is read more than once and fits: per sample
            `4 * height * width * (3 + depth_channels)` bytes (at 224x224
            and 1 depth channel, 0.8 MB: the 10,335 samples need about
            8 GB, so a directory rather than memory). Defaults to `None`.

    Example:

    ```python
    reader = SunRGBD("/data/SUNRGBD", split_file="/data/allsplit.mat")
    train = reader.as_dataset("train", batch_size=32, seed=0)
    held_out = reader.as_dataset("held_out", batch_size=32)
    ```
    """

    name = "sunrgbd"
    class_names = SUNRGBD_CLASSES
    modalities = ("rgb", "depth")
    file_keys = ("rgb", "depth")

    def __init__(
        self,
        root,
        split_file=None,
        image_size=(224, 224),
        normalize="imagenet",
        depth_normalize="max",
        depth_channels=1,
        use_bfx=False,
        unknown_scene="drop",
        held_out_fraction=0.1,
        seed=1337,
        on_error="raise",
        cache=None,
    ):
        super().__init__(root, held_out_fraction, seed, on_error, cache)
        if unknown_scene not in ("drop", "error"):
            raise ValueError("`unknown_scene` must be 'drop' or 'error'.")
        if depth_channels not in (1, 3):
            raise ValueError("`depth_channels` must be 1 or 3.")
        self.image_size = image_size_pair(image_size)
        self.normalize = normalize
        self.depth_normalize = depth_normalize
        self.depth_channels = depth_channels
        self.depth_dir = "depth_bfx" if use_bfx else "depth"
        self.unknown_scene = unknown_scene
        # Per official split: samples dropped for a scene outside the 19.
        self.dropped_scenes = {}
        self._split_lists = self._read_splits(split_file)
        self._folders = self._find_samples()

    def _read_splits(self, split_file):
        if split_file is None:
            mat = os.path.join(self.root, "allsplit.mat")
            if os.path.isfile(mat):
                split_file = mat
            else:
                split_file = {
                    s: os.path.join(self.root, f"{s}.txt")
                    for s in self.official_splits
                }
                for p in split_file.values():
                    if not os.path.isfile(p):
                        raise DataError(
                            f"SUN RGB-D split file not found: {p} (and no "
                            f"{mat}); pass `split_file`."
                        )
        if isinstance(split_file, dict):
            lists = {s: read_split_file(p) for s, p in split_file.items()}
            sources = {s: os.fspath(p) for s, p in split_file.items()}
        else:
            lists = read_split_file(os.fspath(split_file))
            if not isinstance(lists, dict):
                raise DataError(
                    f"{split_file}: a text split file lists one split; pass "
                    "{'train': path, 'test': path}."
                )
            sources = {s: os.fspath(split_file) for s in lists}
        for s in self.official_splits:
            if s not in lists:
                raise DataError(f"No {s!r} split in {split_file}.")
        self._split_sources = sources
        return lists

    def _find_samples(self):
        sensors = [
            s for s in SENSORS if os.path.isdir(os.path.join(self.root, s))
        ]
        if not sensors:
            raise DataError(
                f"No sensor folder ({', '.join(SENSORS)}) under {self.root}."
            )
        folders = {}
        for sensor in sensors:
            top = os.path.join(self.root, sensor)
            for dirpath, dirnames, filenames in os.walk(top):
                if "scene.txt" in filenames or "image" in dirnames:
                    rel = os.path.relpath(dirpath, self.root)
                    folders[rel.replace(os.sep, "/")] = dirpath
                    dirnames[:] = []  # A sample folder holds no samples.
        return folders

    def _single(self, split, folder, sub, ext):
        path = os.path.join(folder, sub)
        if not os.path.isdir(path):
            self.skip(split, path, "folder missing")
            return None
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(ext))
        if not files:
            self.skip(split, path, f"no {'/'.join(ext)} file")
            return None
        return os.path.join(path, files[0])

    def _official_split(self, split):
        source = self._split_sources[split]
        records, dropped = [], 0
        root = self.root.replace(os.sep, "/").rstrip("/") + "/"
        for entry in self._split_lists[split]:
            if entry.startswith(root):
                entry = entry[len(root) :]
            folder = self._folders.get(entry.lstrip("/"))
            if folder is None:
                self.skip(
                    split,
                    os.path.join(self.root, entry),
                    f"sample folder listed in {source} not found",
                )
                continue
            scene_file = os.path.join(folder, "scene.txt")
            if not os.path.isfile(scene_file):
                self.skip(split, scene_file, "scene.txt missing")
                continue
            with open(scene_file, encoding="utf-8") as f:
                scene = f.read().strip()
            if scene not in self.class_names:
                if self.unknown_scene == "error":
                    self.label_index(scene, scene_file)
                dropped += 1
                continue
            rgb = self._single(split, folder, "image", (".jpg", ".png"))
            depth = self._single(split, folder, self.depth_dir, (".png",))
            if rgb is None or depth is None:
                continue
            records.append(
                {
                    "id": entry,
                    "rgb": rgb,
                    "depth": depth,
                    "label": self.label_index(scene, scene_file),
                }
            )
        self.dropped_scenes[split] = dropped
        log_kept(
            f"{self.name}/{split}",
            len(records),
            dropped,
            "samples outside the 19 classes",
        )
        return records

    def _cache_settings(self):
        return {
            "image_size": list(self.image_size),
            "normalize": self.normalize,
            "depth_normalize": self.depth_normalize,
            "depth_channels": self.depth_channels,
            "depth_dir": self.depth_dir,
            "max_depth": SUNRGBD_MAX_DEPTH,
        }

    def _decode_fixed(self, record, training):
        # Nothing is random: the whole decoding is what `cache` keeps.
        rgb = load_image(record["rgb"], self.image_size, self.normalize)
        depth = load_sunrgbd_depth(
            record["depth"],
            self.image_size,
            SUNRGBD_MAX_DEPTH,
            self.depth_normalize,
        )
        if self.depth_channels == 3:
            depth = tf.repeat(depth, 3, axis=-1)
        return {"rgb": rgb, "depth": depth}

    def _diagnose(self, paths):
        rgb, depth = paths.split(SEPARATOR)[:2]
        for path, diagnose in (
            (rgb, diagnose_image),
            (depth, diagnose_depth_png),
        ):
            reason = diagnose(path)
            if reason is not None:
                return path, reason
        return diagnose_files(paths)
