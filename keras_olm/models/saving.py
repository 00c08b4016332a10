"""Saving and loading `BalancedMultimodalModel`: files and their checks.

`SavingMixin` gives the model:

- `load_weights` that restores the optimizer's state too, refuses a file
  that is truncated or corrupt (naming it) and a file whose balancer state
  another balancer wrote (naming both);
- the epoch's metrics in its weights (`save_own_variables`), which a
  `BackupAndRestore` resume in the middle of an epoch restores
  (`keras_olm.trainers.resume`);
- a compile config that names the backend-neutral optimizer class, so
  that a `.keras` file saved under one backend trains under the others.

`load_model` is `keras.saving.load_model` with the same file check.
"""

import os
import warnings
import zipfile

import h5py
import keras

from keras_olm.balancers.base import BALANCER_KEY
from keras_olm.balancers.base import decode_name

#: The weights file inside a `.keras` archive.
_KERAS_WEIGHTS = "model.weights.h5"
#: The prefix of the model's own entries that hold its metrics' variables.
_METRIC_KEY = "metric_"


def check_file(filepath):
    """Raises a clear error when a `.keras` or `.weights.h5` file that
    exists cannot be read (a truncated or corrupt file).

    Args:
        filepath: str or path-like. The file.

    Raises:
        OSError: naming the file, when it is truncated or corrupt (an
            `OSError`, as h5py raises, so that `BackupAndRestore` falls
            back to its previous backup).
    """
    path = os.fspath(filepath)
    if not os.path.isfile(path):
        return
    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC in {bad}")
        elif path.endswith(".h5"):
            with h5py.File(path, "r"):
                pass
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise OSError(
            f"Cannot read {path!r} ({os.path.getsize(path)} bytes): the file "
            f"is truncated or corrupt ({error}). Save the model again or load "
            "an earlier copy."
        ) from error


def saved_balancer(filepath):
    """The registered name of the balancer whose state a weights or
    `.keras` file holds, or `None` when it names none."""
    path = os.fspath(filepath)
    found = []

    def visit(name, item):
        if name.endswith(f"vars/{BALANCER_KEY}") and not found:
            found.append(decode_name(item[()]))

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            if _KERAS_WEIGHTS not in archive.namelist():
                return None
            with archive.open(_KERAS_WEIGHTS) as f, h5py.File(f, "r") as h5:
                h5.visititems(visit)
    elif path.endswith(".h5"):
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    return found[0] if found else None


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model`, with a clear error for a bad file.

    Args:
        filepath: str or path-like. A `.keras` file.
        custom_objects: as in `keras.saving.load_model`.
        compile: as in `keras.saving.load_model`.
        safe_mode: as in `keras.saving.load_model`.

    Returns:
        The model.

    Raises:
        OSError: naming the file, when it is truncated or corrupt (Keras
            itself says "File not found").

    Example:
    ```python
    model.save("run.keras")
    model = keras_olm.load_model("run.keras")
    ```
    """
    check_file(filepath)
    return keras.saving.load_model(
        filepath,
        custom_objects=custom_objects,
        compile=compile,
        safe_mode=safe_mode,
    )


def backend_neutral(config):
    """A serialized optimizer (or compile config) that names Keras'
    public optimizer classes instead of a backend's own (the torch
    backend saves e.g. `keras.src.backend.torch.optimizers.torch_adam`,
    which would give a torch optimizer under TensorFlow)."""
    if isinstance(config, (list, tuple)):
        return type(config)(backend_neutral(c) for c in config)
    if not isinstance(config, dict):
        return config
    config = {k: backend_neutral(v) for k, v in config.items()}
    module = config.get("module")
    if isinstance(module, str) and module.startswith("keras.src.backend."):
        if ".optimizers." in module:
            config["module"] = "keras.optimizers"
    return config


class SavingMixin:
    """What `BalancedMultimodalModel` adds to Keras' saving and loading."""

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """`keras.Model.load_weights`, with the optimizer's state.

        A weights file saved from a compiled model (`save_weights`,
        `ModelCheckpoint(save_weights_only=True)`) holds the optimizer's
        variables as well; Keras restores them only into an optimizer that
        was built before, and otherwise drops them with a warning. Here a
        compiled, built model builds its optimizer first, so a weights-only
        checkpoint resumes training where it stopped: compile the fresh
        model, build it, then load.

        The file names the balancer that wrote it: loading one balancer's
        state into a model with another balancer raises a `ValueError`
        naming both, unless `skip_mismatch=True` (then Keras warns and the
        balancer keeps its state). A truncated or corrupt file raises an
        `OSError` naming it.
        """
        check_file(filepath)
        path = os.fspath(filepath)
        saved = saved_balancer(path) if os.path.isfile(path) else None
        mine = keras.saving.get_registered_name(type(self.balancer))
        if saved is not None and saved != mine:
            what = (
                f"{path!r} holds the state of the balancer "
                f"{saved.split('>')[-1]} ({saved}); this model's balancer "
                f"is {type(self.balancer).__name__} ({mine})"
            )
            if not skip_mismatch:
                raise ValueError(
                    f"{what}. Build the model with the balancer that wrote "
                    "the file, or pass `skip_mismatch=True` to load every "
                    "other weight and leave the balancer's state as it is."
                )
            warnings.warn(
                f"{what}: the balancer's state is not loaded "
                "(`skip_mismatch=True`).",
                stacklevel=2,
            )
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)
        return super().load_weights(
            filepath, skip_mismatch=skip_mismatch, **kwargs
        )

    def save_own_variables(self, store):
        """Saves the model's own variables and its metrics' (the epoch's
        running means), which a resume in the middle of an epoch needs."""
        super().save_own_variables(store)
        for i, variable in enumerate(self.metrics_variables):
            store[f"{_METRIC_KEY}{i}"] = variable

    def load_own_variables(self, store):
        """Restores what `save_own_variables` saved; the metrics only when
        the file holds as many metric variables as the model has."""
        keys = list(store.keys())
        metric_keys = [k for k in keys if k.startswith(_METRIC_KEY)]
        own = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])
        variables = self.metrics_variables
        if len(metric_keys) == len(variables):
            for i, variable in enumerate(variables):
                variable.assign(store[f"{_METRIC_KEY}{i}"])

    def get_compile_config(self):
        return backend_neutral(super().get_compile_config())

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(backend_neutral(config))
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)
