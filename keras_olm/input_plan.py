"""`InputPlan`: every input check of `BalancedMultimodalModel`, and what
its `fit`, `evaluate` and `predict` hand to Keras.

A model builds one plan from its modalities, classes and regression
targets (and reaches its encoders and built input shapes through it, for
the shape check). The plan turns what those calls receive (a dict or a
list of arrays, a `tf.data.Dataset`, a `keras.utils.PyDataset`, a
generator, a torch `DataLoader`; `validation_split`, `validation_data`,
held-out data or the announced held-out split) into checked inputs, with
an error that names the argument and the modality or labels at fault
before a training step can touch any state. Arrays stay arrays (Keras'
array adapter batches and shuffles them), datasets get in-pipeline checks,
and the other forms go to Keras as they are.
"""

import types
from typing import Any
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_olm import batch_checks
from keras_olm import held_out as held_out_lib
from keras_olm import inputs as inputs_lib
from keras_olm.inputs import LABEL
from keras_olm.layers.base import FUSED


def resolve_regression_targets(targets):
    """`regression_targets` as a dict from name to width, checked.

    Args:
        targets: `None`, a name, a list of names (width 1 each) or a dict
            from name to width.

    Returns:
        A dict from target name to its width (empty for `None`).
    """
    if targets is None:
        return {}
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, (list, tuple)):
        targets = {name: 1 for name in targets}
    if not isinstance(targets, dict):
        raise TypeError(
            "regression_targets must be None, a list of names or a dict "
            f"from name to width; got {type(targets).__name__}."
        )
    out = {}
    for name, width in targets.items():
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"regression target names must be strings; got {name!r}."
            )
        if name == LABEL:
            raise ValueError(
                f"'{LABEL}' holds the class labels; rename that "
                "regression target."
            )
        if isinstance(width, bool) or int(width) != width or width < 1:
            raise ValueError(
                f"regression target '{name}' needs a width >= 1; got {width!r}."
            )
        out[name] = int(width)
    return out


def check_encoders(encoders, num_classes):
    """Raises a clear error unless `encoders` is a non-empty dict from
    modality name (a non-empty string other than `"fused"`) to a Keras
    layer, and `num_classes` is at least 2."""
    if not isinstance(encoders, dict) or len(encoders) < 1:
        raise ValueError(
            "encoders must be a non-empty dict from modality name to a "
            f"Keras layer; got {type(encoders).__name__}."
        )
    for name, encoder in encoders.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                "The modality names (the keys of `encoders`) must be "
                f"non-empty strings; got {name!r} "
                f"({type(name).__name__})."
            )
        if name == FUSED:
            raise ValueError(
                f"'{FUSED}' is the fused head's name; rename that modality."
            )
        if not isinstance(encoder, keras.layers.Layer):
            raise TypeError(
                f"The encoder of modality '{name}' must be a Keras "
                f"layer or model; got {type(encoder).__name__}."
            )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")


class FitPlan(NamedTuple):
    """What `fit` hands to Keras' `fit`, from `InputPlan.for_fit`.

    Args:
        fit_inputs: the training inputs, a `held_out.FitInputs` (arrays
            stay arrays).
        validation_split: float. What Keras splits off (0 for arrays,
            which the plan splits itself).
        validation_data: the validation data; checked by `finish_fit`.
        build_shapes: dict from modality name to the input shape to build
            the model with, or `None` where Keras builds it from the first
            batch (a `PyDataset`, a generator, a `DataLoader`).
        held_out_for: str or `None`. The name of the balancer that reads
            held-out losses, or `None` where it reads none.
        held_out_data: the held-out data as given, or the held-out part of
            the arrays.
        held_out_where: str. How error messages name the held-out data.
        held_out: the checked, batched held-out `tf.data.Dataset` (set by
            `finish_fit`), or `None`.
    """

    fit_inputs: Any
    validation_split: float = 0.0
    validation_data: Any = None
    build_shapes: Any = None
    held_out_for: Any = None
    held_out_data: Any = None
    held_out_where: str = "held_out_data"
    held_out: Any = None


class InputPlan:
    """Checks a model's inputs and turns them into what Keras takes.

    Args:
        modalities: list of str. The encoders' keys, in order.
        num_classes: int. Number of classes.
        regression_targets: what `BalancedMultimodalModel` takes (`None`,
            names, or a dict from name to width); resolved and checked.
        encoders: dict from modality name to its encoder, or `None`. An
            input shape other than the built one passes where the encoder
            takes it.
        built_shapes: a callable that returns the dict from modality name
            to the input shape the model was built with, or `None` before
            it is built (no shape check then); or `None` for no shape
            check.

    Example:
    ```python
    plan = InputPlan(["audio", "visual"], num_classes=6)
    x, y = plan.for_evaluate([xa, xv], y)  # {"audio": xa, "visual": xv}
    plan.check_arrays({"audio": xa}, y, "fit")  # ValueError: missing...
    ```
    """

    def __init__(
        self,
        modalities,
        num_classes,
        regression_targets=None,
        encoders=None,
        built_shapes=None,
    ):
        self.modalities = list(modalities)
        self.num_classes = int(num_classes)
        self.regression_targets = resolve_regression_targets(regression_targets)
        self.encoders = encoders
        self.built_shapes = built_shapes

    # --- fit, evaluate, predict ------------------------------------------

    def for_fit(
        self,
        fit_inputs,
        *,
        validation_split=0.0,
        validation_data=None,
        held_out_data=None,
        held_out_split=0.1,
        held_out_seed=0,
        balancer=None,
        verbose="auto",
    ):
        """Checks `fit`'s training inputs and splits arrays.

        Arrays are checked (keys, lengths, labels, sample weights, shapes),
        their targets normalised, `validation_split` taken off their end
        as Keras does, and, for a balancer that reads held-out losses and
        no `held_out_data`, `held_out_split` of the rest held out by a
        seeded permutation (announced in one line unless `verbose` is 0).
        A dataset gets in-pipeline checks. There must be a batch.

        The held-out and validation data are checked by `finish_fit`, once
        the model is built from `build_shapes`.

        Args:
            fit_inputs: a `held_out.FitInputs` of `fit`'s `x`, `y`,
                `sample_weight`, `batch_size`, `shuffle` and `class_weight`.
            validation_split, validation_data, held_out_data,
                held_out_split, held_out_seed, verbose: `fit`'s arguments.
            balancer: the model's `Balancer`, or `None`.

        Returns:
            A `FitPlan`.
        """
        x, y = fit_inputs.x, fit_inputs.y
        sample_weight, shuffle = fit_inputs.sample_weight, fit_inputs.shuffle
        held_out_for = None
        if balancer is not None and balancer.needs_held_out:
            held_out_for = type(balancer).__name__
        held_out_where = "held_out_data"
        x = self.as_dict(x, "fit")
        if inputs_lib.is_arrays(x):
            if y is None:
                raise ValueError("fit: labels `y` are required with arrays.")
            y = self._checked_arrays(x, y, "fit", sample_weight)
            if validation_split and validation_data is None:
                from keras.src.trainers.data_adapters import array_slicing

                (x, y, sample_weight), validation_data = (
                    array_slicing.train_validation_split(
                        (x, y, sample_weight),
                        validation_split=validation_split,
                    )
                )
            validation_split = 0.0
            if held_out_for is not None and held_out_data is None:
                held_out_where = (
                    f"the held-out part of `x` (held_out_split="
                    f"{held_out_split})"
                )
                (x, y, sample_weight), held_out_data = (
                    held_out_lib.split_arrays(
                        x, y, sample_weight, held_out_split, held_out_seed
                    )
                )
                if verbose != 0:
                    n = len(held_out_data[1])
                    total = n + len(next(iter(x.values())))
                    print(
                        f"{held_out_for}: held out {n} of "
                        f"the {total} training samples (held_out_split="
                        f"{held_out_split}, seed {held_out_seed}) for its "
                        "held-out losses; they are not trained on. Pass "
                        "held_out_data= to choose them."
                    )
        else:
            if isinstance(x, tf.data.Dataset) and (
                y is not None or sample_weight is not None
            ):
                raise ValueError(
                    "fit: with a dataset, labels and sample weights come "
                    "from the dataset; do not pass `y` or `sample_weight`."
                )
            x = self.for_evaluate(x, None, "fit")[0]
        inputs_lib.check_not_empty(x, "fit", "x")
        if not inputs_lib.is_arrays(x) and not isinstance(
            x, keras.utils.PyDataset
        ):
            # Keras ignores `shuffle` for datasets, generators and
            # DataLoaders (they come shuffled or not) and warns when it is
            # on, as it is by default.
            shuffle = False
        return FitPlan(
            fit_inputs=fit_inputs._replace(
                x=x, y=y, sample_weight=sample_weight, shuffle=shuffle
            ),
            validation_split=validation_split,
            validation_data=validation_data,
            build_shapes=self.build_shapes(x),
            held_out_for=held_out_for,
            held_out_data=held_out_data,
            held_out_where=held_out_where,
        )

    def finish_fit(self, plan):
        """Checks a `FitPlan`'s held-out and validation data (against the
        model as built from the training inputs).

        Args:
            plan: a `FitPlan` from `for_fit`.

        Returns:
            The `FitPlan` with `held_out` (the checked, batched held-out
            dataset, or `None`) and the checked `validation_data`.
        """
        held_out = None
        if plan.held_out_for is not None:
            if plan.held_out_data is None:
                raise ValueError(
                    f"{plan.held_out_for} measures losses on "
                    "held-out training data: pass fit(..., "
                    "held_out_data=...), e.g. from "
                    "`keras_olm.split_held_out(unbatched_ds, 0.1)` "
                    "(a split of the training data, never the test set)."
                )
            held_out = self.held_out_dataset(
                plan.held_out_data,
                plan.fit_inputs.batch_size or 32,
                plan.held_out_where,
            )
        validation_data = plan.validation_data
        if validation_data is not None:
            validation_data = self.for_validation(validation_data)
        return plan._replace(held_out=held_out, validation_data=validation_data)

    def for_evaluate(self, x, y, where="evaluate", sample_weight=None):
        """Inputs to evaluate (or, with `where="fit"`, train) on: arrays
        (a list of arrays becomes a dict) checked with their targets
        normalised; a dataset with in-pipeline checks; a `PyDataset`, a
        generator or a `DataLoader` with every batch checked as it is read
        (`keras_olm.batch_checks`). Floating-point inputs must be finite,
        but for training (the training step's guard checks those).

        Args:
            x, y: the inputs and, for arrays, the targets.
            where: str. The argument, for error messages.
            sample_weight: the sample weights of array inputs, or `None`.

        Returns:
            `(x, y)`.
        """
        x = self.as_dict(x, where)
        if inputs_lib.is_arrays(x):
            if y is not None:
                y = self._checked_arrays(x, y, where, sample_weight)
            if where != "fit" and isinstance(x, dict):
                inputs_lib.check_finite_arrays(x, where)
        elif isinstance(x, tf.data.Dataset):
            x = self.check_dataset(x, where)
            self.check_dataset_shapes(x, where)
        else:
            x = batch_checks.checked(x, self.batch_check(where))
        return x, y

    def batch_check(self, where, finite_inputs=None, labels=True):
        """The `batch_checks.BatchCheck` of this model's batches.

        Args:
            where: str. The argument, for error messages.
            finite_inputs: bool or `None`. Whether floating-point inputs
                must be finite; `None`: everywhere but in `fit`'s training
                inputs.
            labels: bool. Whether to check labels and sample weights.
        """
        if finite_inputs is None:
            finite_inputs = where != "fit"
        return batch_checks.BatchCheck(
            self.modalities,
            self.num_classes,
            self.regression_targets,
            where,
            finite_inputs,
            labels,
        )

    def for_predict(self, x, where="predict"):
        """Inputs to predict from, with array inputs checked (a list of
        arrays becomes a dict)."""
        x = self.as_dict(x, where)
        if isinstance(x, dict) and inputs_lib.is_arrays(x):
            self.check_call_inputs(x)
            self.check_input_shapes(
                {m: (np.shape(v), _dtype_name(v)) for m, v in x.items()},
                where,
            )
        elif not isinstance(x, tf.data.Dataset):
            x = batch_checks.checked(
                x, self.batch_check(where, finite_inputs=False, labels=False)
            )
        return x

    def for_validation(self, data):
        """`validation_data` with array inputs checked (a list of arrays
        becomes a dict); datasets get in-pipeline checks; other forms go
        to Keras as they are."""
        where = "validation_data"
        if isinstance(data, (tuple, list)) and len(data) in (2, 3):
            sample_weight = data[2] if len(data) == 3 else None
            x, y = self.for_evaluate(data[0], data[1], where, sample_weight)
            return (x, y, *data[2:])
        return self.for_evaluate(data, None, where)[0]

    def build_shapes(self, x):
        """The input shapes to build the model with, from arrays or a
        dataset; `None` for other forms (Keras builds from their first
        batch)."""
        if isinstance(x, dict) and inputs_lib.is_arrays(x):
            self.check_modalities(x.keys(), "fit")
            return {m: (None, *np.shape(x[m])[1:]) for m in x}
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec[0]
            return {m: (None, *spec[m].shape[1:]) for m in spec}
        return None

    # --- held-out data ---------------------------------------------------

    def held_out_dataset(self, data, batch_size, where="held_out_data"):
        """Held-out data in any input form `fit` takes, as a checked,
        batched `tf.data.Dataset`.

        The held-out data are checked as training data are (the
        modalities, the labels' range, the batch sizes, the built shapes)
        and besides must be finite and hold at least one sample: arrays
        with numpy, other forms by one pass over their batches here, so
        that bad held-out data stop `fit` before its first step. The same
        checks run in the pipeline on every later pass, so a batch that
        turns bad later stops `fit` before a step reads it. Data that
        repeat forever are an error: a dataset of infinite cardinality at
        once, data of unknown length once the pass has read
        `MAX_HELD_OUT_BATCHES` (10,000) batches without reaching the end.

        Args:
            data: a `tf.data.Dataset`, an `(inputs, labels[,
                sample_weight])` tuple of arrays (inputs a dict, or a list
                in the encoders' order), or a `keras.utils.PyDataset`, a
                generator or a torch `DataLoader` of such batches. A
                generator is read once and its batches kept in memory for
                the later passes.
            batch_size: int. Batch size for arrays.
            where: str. The argument's name, for error messages.
        """
        dataset = self._held_out_dataset(data, batch_size, where)
        self.check_dataset_shapes(dataset, where)
        return dataset

    def _held_out_dataset(self, data, batch_size, where):
        if isinstance(data, (tuple, list)) and len(data) in (2, 3):
            x = self.as_dict(data[0], where)
            if inputs_lib.is_arrays(x):
                data = (x, *data[1:])
        if isinstance(data, (tuple, list)) and inputs_lib.is_arrays(data[0]):
            dataset = self._arrays_dataset(data, batch_size, where)
            inputs_lib.check_finite_arrays(data[0], where)
            if len(data) == 3:
                inputs_lib.check_sample_weight(
                    data[2], len(data[0][self.modalities[0]]), where
                )
            return dataset
        if isinstance(data, tf.data.Dataset):
            dataset = self.check_dataset(data, where)
            _check_batches(dataset, where)
            return dataset
        from keras.src.trainers.data_adapters import get_data_adapter

        try:
            adapter = get_data_adapter(data)
        except ValueError as error:
            raise TypeError(
                f"{where} must be a tf.data.Dataset, an (inputs, labels) "
                "tuple of arrays, a keras.utils.PyDataset, a generator or a "
                f"torch DataLoader; got {type(data).__name__}."
            ) from error
        dataset = adapter.get_tf_dataset()
        if isinstance(data, types.GeneratorType):
            dataset = dataset.cache()
        dataset = self.check_dataset(dataset, where)
        batches = _check_batches(dataset, where)
        if dataset.cardinality() < 0:
            # Counted now: the schedule needs the count (`num_batches`).
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(batches)
            )
        return dataset

    def _arrays_dataset(self, data, batch_size, where):
        """A checked, unshuffled dataset from an `(inputs, labels[, sw])`
        tuple of arrays."""
        x, y = data[0], data[1]
        self.check_arrays(x, y, where)
        y = self.normalize_targets(y, where)
        sw = data[2] if len(data) == 3 else None
        n = len(data[0][self.modalities[0]])
        return inputs_lib.arrays_to_dataset(
            x, y, sw, min(batch_size, n), False, 0
        )

    # --- arrays ----------------------------------------------------------

    def as_dict(self, x, where):
        """A list or tuple of per-modality arrays, in the encoders' order,
        as the dict the model takes; anything else is returned unchanged."""
        if (
            not isinstance(x, (list, tuple))
            or not x
            or not inputs_lib.is_arrays(list(x))
        ):
            return x
        if len(x) != len(self.modalities):
            raise ValueError(
                f"{where}: a list of inputs needs one array per modality, in "
                f"the encoders' order {list(self.modalities)}; got {len(x)} "
                "arrays."
            )
        return dict(zip(self.modalities, x))

    def _checked_arrays(self, x, y, where, sample_weight=None):
        """Checks array inputs, their sample weights and their shapes;
        returns the targets normalised (`normalize_targets`)."""
        self.check_arrays(x, y, where)
        inputs_lib.check_sample_weight(
            sample_weight, len(x[self.modalities[0]]), where
        )
        self.check_input_shapes(
            {m: (np.shape(v), _dtype_name(v)) for m, v in x.items()}, where
        )
        return self.normalize_targets(y, where)

    def check_arrays(self, x, y, where):
        """Validates array inputs: keys, equal lengths, labels in range.

        With regression targets, `y` must be a dict `{"label": class ids,
        name: values, ...}` with finite values.
        """
        if not isinstance(x, dict):
            raise TypeError(
                f"{where}: inputs must be a dict from modality name to "
                f"array; got {type(x).__name__}."
            )
        self.check_modalities(x.keys(), where)
        lengths = {m: len(x[m]) for m in self.modalities}
        targets = {}
        if y is not None:
            y, targets = self.split_targets(y, where)
            lengths["labels"] = len(y)
            lengths.update({n: len(v) for n, v in targets.items()})
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{where}: every modality (and the labels) must have the "
                f"same number of samples; got {lengths}."
            )
        if not lengths[self.modalities[0]]:
            raise ValueError(
                f"{where}: the inputs hold no samples (arrays of length 0)."
            )
        if y is not None:
            self.check_labels(y, where)

    def check_modalities(self, keys, where):
        """Raises a clear error when input keys differ from the encoders'."""
        keys = set(keys)
        expected = set(self.modalities)
        if keys != expected:
            missing = sorted(expected - keys)
            extra = sorted(keys - expected)
            parts = []
            if missing:
                parts.append(f"missing modalities {missing}")
            if extra:
                parts.append(f"unknown modalities {extra}")
            raise ValueError(
                f"{where}: the input dict must have exactly the encoders' "
                f"keys {sorted(expected)}; " + " and ".join(parts) + "."
            )

    def check_build_shape(self, input_shape):
        """Checks the input shape the model is built with: a dict with
        the encoders' keys."""
        if not isinstance(input_shape, dict):
            raise ValueError(
                "BalancedMultimodalModel inputs are dicts from modality name "
                f"to tensor; got input shape {input_shape}."
            )
        self.check_modalities(input_shape, "build")

    def check_call_inputs(self, inputs):
        """Checks what the model is called on: a dict with the encoders'
        keys and one batch size."""
        if not isinstance(inputs, dict):
            raise ValueError(
                "BalancedMultimodalModel inputs must be a dict from modality "
                f"name to tensor; got {type(inputs).__name__}."
            )
        self.check_modalities(inputs.keys(), "inputs")
        sizes = {m: inputs[m].shape[0] for m in self.modalities}
        known = {m: s for m, s in sizes.items() if s is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                "inputs: every modality must have the same batch size; got "
                f"{known}."
            )

    def check_labels(self, y, where):
        """Raises a clear error unless `y` holds integer class ids in
        `[0, num_classes)`, of shape `(n,)` or `(n, 1)`."""
        num_classes = self.num_classes
        y = np.asarray(y)
        if y.ndim != 1:
            y = y.reshape(len(y), -1)
            if y.shape[1] != 1:
                raise ValueError(
                    f"{where}: labels must be integer class ids of shape "
                    f"(batch,); got shape {y.shape}."
                )
            y = y[:, 0]
        if y.dtype.kind == "O":
            try:
                y = y.astype("float64")
            except (TypeError, ValueError):
                pass
        if not batch_checks.is_numeric_dtype(y.dtype):
            raise ValueError(batch_checks.label_dtype_message(where, y.dtype))
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError(f"{where}: labels must be integer class ids.")
        bad = (y < 0) | (y >= num_classes)
        if np.any(bad):
            index = int(np.argmax(bad))
            raise ValueError(
                f"{where}: labels must lie in [0, {num_classes}); sample "
                f"{index} has label {y[index].item()!r} ({int(bad.sum())} bad "
                "labels in all)."
            )

    # --- targets ---------------------------------------------------------

    def check_target_keys(self, keys, where):
        """Raises a clear error when a dict of targets has the wrong keys."""
        expected = {LABEL, *self.regression_targets}
        keys = set(keys)
        if keys != expected:
            parts = []
            if expected - keys:
                parts.append(f"missing targets {sorted(expected - keys)}")
            if keys - expected:
                parts.append(f"unknown targets {sorted(keys - expected)}")
            raise ValueError(
                f"{where}: the targets must be a dict with exactly the keys "
                f"{sorted(expected)} (the class labels under '{LABEL}' and "
                "one entry per regression head); " + " and ".join(parts) + "."
            )

    def split_targets(self, y, where):
        """`(labels, {name: float32 (n, width)})` from array targets,
        checked. Labels of shape `(n, 1)` come back as `(n,)`."""
        regression_targets = self.regression_targets
        if not regression_targets:
            if isinstance(y, dict):
                raise ValueError(
                    f"{where}: this model has no regression heads, so the "
                    "labels must be an array of class ids, not a dict with "
                    f"keys {sorted(y)}."
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
        self.check_target_keys(y.keys(), where)
        targets = {}
        for name, width in regression_targets.items():
            values = np.asarray(y[name])
            if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
                values.dtype, np.complexfloating
            ):
                raise ValueError(
                    f"{where}: regression target '{name}' must be real "
                    f"numbers; got dtype {values.dtype}."
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
                    f"{where}: regression target '{name}' must be finite; "
                    f"sample {index} has {values[index].tolist()} "
                    f"({int(bad.sum())} non-finite samples in all)."
                )
            targets[name] = values
        return _flat_labels(y[LABEL]), targets

    def normalize_targets(self, y, where):
        """Array targets as fit feeds them: labels `(n,)`, or a dict with
        them and the regression targets `(n, w)`."""
        labels, targets = self.split_targets(y, where)
        if not self.regression_targets:
            return labels
        return {LABEL: labels, **targets}

    # --- datasets --------------------------------------------------------

    def check_dataset_spec(self, spec, where):
        """Validates a dataset's element structure: `(dict inputs,
        labels[, sample_weight])`."""
        regression_targets = self.regression_targets
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
        self.check_modalities(spec[0].keys(), where)
        if regression_targets:
            if not isinstance(spec[1], dict):
                raise ValueError(
                    f"{where}: this model has regression heads "
                    f"{sorted(regression_targets)}, so the dataset must yield "
                    f"targets as a dict {{'{LABEL}': ..., "
                    + ", ".join(f"'{n}': ..." for n in regression_targets)
                    + f"}}; got {spec[1]}."
                )
            self.check_target_keys(spec[1].keys(), where)
        elif isinstance(spec[1], dict):
            raise ValueError(
                f"{where}: this model has no regression heads, so the labels "
                f"must be a tensor of class ids, not a dict with keys "
                f"{sorted(spec[1])}."
            )

    def check_dataset(self, ds, where, finite_inputs=None):
        """Adds in-pipeline checks to a dataset of `(x, y[, sw])` batches
        (`keras_olm.batch_checks.dataset_checks`).

        Labels of shape `(batch, 1)` come out as `(batch,)`.

        Args:
            ds: a `tf.data.Dataset` of batches.
            where: str. The argument, for the messages.
            finite_inputs: bool or `None`. Whether floating-point inputs
                must be finite; `None`: everywhere but in `fit`'s training
                inputs (there the training step's guard checks them).
        """
        modalities = self.modalities
        num_classes = self.num_classes
        regression_targets = self.regression_targets
        if finite_inputs is None:
            finite_inputs = where != "fit"
        self.check_dataset_spec(ds.element_spec, where)
        label_spec = ds.element_spec[1]
        if regression_targets:
            label_spec = label_spec[LABEL]
        label_rank = _label_rank(label_spec, where)
        if not batch_checks.is_numeric_dtype(label_spec.dtype.as_numpy_dtype):
            raise batch_checks.BatchError(
                batch_checks.label_dtype_message(where, label_spec.dtype.name)
            )

        def check(index, element):
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
            for name in regression_targets:
                deps.append(
                    tf.debugging.assert_equal(
                        tf.shape(targets[name])[0],
                        n,
                        message=(
                            f"{where}: regression target {name} has a "
                            "different batch size than the labels"
                        ),
                    )
                )
            deps += batch_checks.dataset_checks(
                index,
                x,
                y,
                element[2] if len(element) > 2 else None,
                {name: targets[name] for name in regression_targets},
                modalities=modalities,
                num_classes=num_classes,
                where=where,
                finite_inputs=finite_inputs,
            )
            with tf.control_dependencies(deps):
                targets = tf.nest.map_structure(tf.identity, targets)
            return (x, targets) + tuple(element[2:])

        return ds.enumerate().map(check)

    # --- shapes ----------------------------------------------------------

    def check_input_shapes(self, specs, where):
        """Raises a clear error naming the modality when an input's shape
        does not fit the built model.

        An input whose shape (past the batch axis) matches the shape the
        model was built with passes, a dimension that is unknown on either
        side matching any. Another shape passes where the modality's
        encoder takes it (a traced call, e.g. another sequence length for
        a sequence encoder) and raises `ValueError` where it does not.

        Args:
            specs: dict from modality name to `(shape, dtype)`; `shape`
                includes the batch axis, with `None` for unknown
                dimensions, or is `None` for an unknown rank.
            where: str. The call or argument, for the error message.
        """
        built = self.built_shapes() if self.built_shapes else None
        if not isinstance(built, dict):
            return
        for m in self.modalities:
            shape, dtype = specs.get(m, (None, None))
            if shape is None or m not in built:
                continue
            expected = tuple(built[m])[1:]
            got = tuple(shape)[1:]
            if len(got) == len(expected) and all(
                a is None or b is None or a == b for a, b in zip(got, expected)
            ):
                continue
            if len(got) == len(expected):
                probe = [e if g is None else g for g, e in zip(got, expected)]
            else:
                probe = [1 if g is None else g for g in got]
            try:
                _trace(self.encoders[m], (2, *probe), dtype or "float32")
            except Exception as error:
                raise ValueError(
                    f"{where}: modality '{m}' has inputs of shape "
                    f"{tuple(shape)}, but the model was built for "
                    f"{(None, *expected)} and the encoder of '{m}' does not "
                    f"take them: {error}"
                ) from error

    def check_dataset_shapes(self, dataset, where):
        """`check_input_shapes` on a dataset's element spec."""
        spec = dataset.element_spec[0]
        self.check_input_shapes(
            {
                m: (
                    None if s.shape.rank is None else tuple(s.shape),
                    s.dtype.name,
                )
                for m, s in spec.items()
            },
            where,
        )


def _flat_labels(y):
    """Labels of shape `(n, 1)` (or `(n, 1, 1)`...) as `(n,)`; any other
    shape as it is (`InputPlan.check_labels` rejects it)."""
    y = np.asarray(y)
    if y.ndim > 1 and y.size == len(y):
        return y.reshape(len(y))
    return y


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


#: How many batches of held-out data of unknown length `fit` reads, at
#: most, in its pass over them before the first step; data that go on
#: longer are taken to repeat forever (an error: the held-out batches
#: cycle through a finite set on their own). A held-out set of a known
#: length (`dataset.take(n)`, `tf.data.experimental.assert_cardinality`,
#: a `PyDataset` with `num_batches`) is read whole, however long.
MAX_HELD_OUT_BATCHES = 10_000


def _repeats_forever(where, detail):
    return ValueError(
        f"{where}: {detail}; pass a finite held-out set (the held-out "
        "batches cycle through it on their own), or one of a known length "
        "(e.g. `dataset.take(n)`)."
    )


def _check_batches(dataset, where):
    """Reads every batch of a checked held-out dataset once: its
    in-pipeline checks run (floating-point inputs must be finite), and
    there must be at least one batch. A dataset of unknown length is read
    for at most `MAX_HELD_OUT_BATCHES` batches. Returns the number of
    batches."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise _repeats_forever(where, "the dataset repeats forever")
    bound = MAX_HELD_OUT_BATCHES if cardinality < 0 else None
    batches = 0
    iterator = iter(dataset)
    try:
        while True:
            if bound is not None and batches >= bound:
                try:
                    next(iterator)
                except StopIteration:
                    break
                raise _repeats_forever(
                    where,
                    f"the data hold more than {bound} batches and their "
                    "length is unknown: they seem to repeat forever "
                    "(MAX_HELD_OUT_BATCHES)",
                )
            try:
                next(iterator)
            except StopIteration:
                break
            batches += 1
    except tf.errors.OpError as error:
        clear = batch_checks.clear_error(error)
        if clear is error:
            raise
        raise clear from None
    if not batches:
        raise ValueError(
            f"{where}: the held-out data yield no batches; OLM needs at "
            "least one held-out sample."
        )
    return batches


def _dtype_name(array):
    dtype = getattr(array, "dtype", None)
    try:
        return keras.backend.standardize_dtype(dtype)
    except Exception:
        return None


def _trace(layer, shape, dtype):
    """Runs `layer` on a traced (not symbolic) tensor of this shape, as a
    step would call it; raises where the layer does not take it.

    (A symbolic call checks more than a step does: a `Sequential` built
    for one sequence length rejects another there, and takes it in a
    step.)
    """
    from keras.src.backend import compute_output_spec

    compute_output_spec(
        lambda t: layer(t, training=False), keras.KerasTensor(shape, dtype)
    )
