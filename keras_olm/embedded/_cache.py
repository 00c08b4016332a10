"""Cache directories, atomic generation and progress bars for datasets.

A generated dataset lives in one directory. It is written into a hidden
temporary sibling first and renamed into place only once every file and the
completion marker are on disk, so an interrupted generation never looks like
a complete dataset: a directory counts as complete exactly when it holds the
marker file `MARKER`.
"""

import hashlib
import json
import os
import pathlib
import shutil
import uuid

# Written last, inside the temporary directory, just before the rename.
MARKER = ".keras_olm_dataset.json"
CACHE_ENV = "KERAS_OLM_CACHE"
_TMP_INFIX = ".incomplete-"


def cache_root():
    """Return the directory that holds generated datasets.

    `$KERAS_OLM_CACHE` when set, else `~/.cache/keras_olm`.

    Returns:
        A `pathlib.Path` (not necessarily existing yet).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/keras_olm").expanduser()


def params_hash(params):
    """Short stable hash of a JSON-serialisable parameter dict."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:10]


def default_dir(name, version, params):
    """`<cache_root()>/<name>-<version>-<hash of params>`."""
    return cache_root() / f"{name}-{version}-{params_hash(params)}"


def is_complete(path):
    """Whether `path` is a completely generated dataset directory."""
    return (pathlib.Path(path) / MARKER).is_file()


def read_marker(path):
    """The marker's contents (name, version, params) of a dataset dir."""
    with open(pathlib.Path(path) / MARKER, encoding="utf-8") as f:
        return json.load(f)


def generate_atomically(
    writer, name, version, params, root=None, overwrite=False
):
    """Generate a dataset into `root` once, atomically.

    Args:
        writer: callable. `writer(tmp_dir, root)` writes every file of the
            dataset under the `pathlib.Path` `tmp_dir`; `root` is where the
            dataset will end up (for messages).
        name: str. Dataset name, recorded in the marker.
        version: str. Generator version; part of the default directory.
        params: dict. JSON-serialisable generation parameters; their hash
            names the default directory and they are recorded in the marker.
        root: str or path. The dataset directory. Defaults to
            `default_dir(name, version, params)`.
        overwrite: bool. Regenerate even if `root` is already complete.
            Defaults to `False`.

    Returns:
        The dataset directory as a `pathlib.Path`.
    """
    in_cache = root is None
    root = default_dir(name, version, params) if in_cache else root
    root = pathlib.Path(root).expanduser().absolute()
    meta = {"name": name, "version": version, "params": params}

    if is_complete(root) and not overwrite:
        found = read_marker(root)
        if found.get("name") == name and found.get("params") == params:
            return root
        raise FileExistsError(
            f"{root} already holds a generated dataset with other "
            f"parameters ({found}); pass `overwrite=True` to replace it or "
            "choose another `root`."
        )
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory.")
    if root.is_dir() and any(root.iterdir()) and not is_complete(root):
        # A leftover in the cache is ours to replace; anything else is not.
        if not in_cache:
            raise FileExistsError(
                f"{root} is not empty and holds no complete generated "
                f"dataset (no {MARKER}); refusing to write into it. Remove "
                "it or choose another `root`."
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}{_TMP_INFIX}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer(tmp, root)
        with open(tmp / MARKER, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if root.is_dir():
            if is_complete(root) and not overwrite:
                # Another process finished the same dataset first.
                shutil.rmtree(tmp)
                return root
            # Move the old directory aside first so that `root` is never
            # half-written; an empty directory is simply replaced.
            if any(root.iterdir()):
                old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(root, old)
                shutil.rmtree(old, ignore_errors=True)
            else:
                root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root):
                raise
            # Lost a race with a concurrent generation of the same dataset.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


class Progress:
    """A `keras.utils.Progbar` when `verbose`, else a no-op."""

    def __init__(self, total, verbose=True, label=None):
        self.bar = None
        if verbose:
            import keras

            if label:
                print(label, flush=True)
            self.bar = keras.utils.Progbar(total, unit_name="sample")
        self.count = 0

    def update(self, n=1):
        self.count += n
        if self.bar is not None:
            self.bar.update(self.count)
