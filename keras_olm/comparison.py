"""Balancers compared on the user's own model and data, in one call.

`compare_balancers` trains one model per balancer and seed on the same
training samples, picks each run's checkpoint on validation accuracy,
scores it on the test data once, and returns a `BalancerComparison`: the
per-run results, the table of means, spreads and paired differences
against a reference (pandas DataFrames) and a plot.
"""

import math
import time
from dataclasses import dataclass
from dataclasses import field

import keras
import numpy as np

from keras_olm import balancers as olm_balancers

#: The label of plain joint training (`balancer=None`).
JOINT = "joint"


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy.

    After every epoch the callback predicts every head on the validation
    arrays with `predict_heads`, records each head's accuracy, and keeps
    the weights of the epoch whose `head` accuracy is the highest (on a
    tie, the earlier epoch). It also times each epoch, the validation pass
    included.

    Args:
        validation_data: tuple `(x, y)`. Inputs as the model takes them
            (dict or list of arrays) and integer labels.
        head: str. The head whose accuracy picks the checkpoint. Defaults
            to `"fused"`.

    Example:

    ```python
    best = keras_olm.comparison.BestCheckpoint((val_x, val_y))
    model.fit(x, y, epochs=10, callbacks=[best])
    model.set_weights(best.best_weights)
    ```
    """

    def __init__(self, validation_data, head="fused"):
        super().__init__()
        self.validation_data = validation_data
        self.head = head
        self.best = -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.epoch_seconds = []
        self.history = {}
        self.train_history = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        x, y = self.validation_data
        y = np.asarray(y)
        logits = self.model.predict_heads(x, verbose=0)
        for head, value in logits.items():
            accuracy = float(np.mean(np.asarray(value).argmax(-1) == y))
            self.history.setdefault(head, []).append(accuracy)
            if logs and f"{head}_acc" in logs:
                self.train_history.setdefault(head, []).append(
                    float(logs[f"{head}_acc"])
                )
        if self.head not in self.history:
            raise ValueError(
                f"BestCheckpoint: the model has no head {self.head!r}; its "
                f"heads are {sorted(self.history)}."
            )
        value = self.history[self.head][-1]
        if value > self.best:
            self.best = value
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()
        self.epoch_seconds.append(time.perf_counter() - self._start)

    def seconds_per_epoch(self):
        """Mean seconds per epoch, without the first (tracing) epoch."""
        times = self.epoch_seconds[1:] or self.epoch_seconds
        return float(np.mean(times))


@dataclass
class BalancerComparison:
    """The result of `compare_balancers`.

    Attributes:
        runs: pandas DataFrame, one row per balancer and seed: `balancer`,
            `seed`, `best_epoch`, `val_accuracy` (at the best epoch),
            `test_accuracy` (of that checkpoint; NaN without test data),
            `seconds_per_epoch`.
        table: pandas DataFrame indexed by balancer: `accuracy` and
            `accuracy_std` (mean and standard deviation over seeds of the
            scored split), `vs_<reference>` and `vs_<reference>_std` (the
            mean and standard deviation over seeds of the paired
            difference against the reference run of the same seed),
            `wins` (seeds above the reference, e.g. `"2/3"`), `best_epoch`
            (mean) and `seconds_per_epoch` (mean).
        reference: str. The balancer of the paired differences.
        scored_on: str. `"test"`, or `"validation"` when no test data was
            given (then the accuracies are those that picked the
            checkpoint, an optimistic estimate).
        probabilities: dict from `(balancer, seed)` to the fused head's
            softmax probabilities on the scored split, `(n, classes)`.
        curves: dict from `(balancer, seed)` to `{head: [validation
            accuracy per epoch]}`.
    """

    runs: object
    table: object
    reference: str
    scored_on: str
    probabilities: dict = field(default_factory=dict, repr=False)
    curves: dict = field(default_factory=dict, repr=False)

    def plot(self, path=None, title=None):
        """Draws the accuracies and the paired differences.

        Left: each balancer's accuracy, mean ± standard deviation over
        seeds, with every seed as a point. Right: each balancer's paired
        difference against the reference, in points of accuracy, every
        seed a point.

        Args:
            path: str or `None`. Where to save the figure (PNG, PDF, ...).
                Defaults to `None` (not saved).
            title: str or `None`. The figure's title. Defaults to
                "Balancers compared (<split> accuracy, n seeds)".

        Returns:
            The matplotlib `Figure`.
        """
        from matplotlib.figure import Figure

        column = f"{self.scored_on}_accuracy"
        if self.scored_on == "validation":
            column = "val_accuracy"
        names = list(self.table.index)
        seeds = sorted(set(self.runs["seed"]))
        figure = Figure(figsize=(4.0 + 1.1 * len(names), 4.2))
        left, right = figure.subplots(1, 2)
        positions = np.arange(len(names))
        dots = dict(marker="o", color="k", linestyle="", markersize=3.5)
        for i, name in enumerate(names):
            rows = self.runs[self.runs["balancer"] == name]
            values = rows[column].to_numpy(float)
            diffs = 100 * self._paired(name, column)
            for axis, y in ((left, values), (right, diffs)):
                axis.bar(i, y.mean(), color=f"C{i % 10}", alpha=0.75)
                axis.errorbar(i, y.mean(), yerr=y.std(), color="k", capsize=4)
                axis.plot(np.full(len(y), i + 0.18), y, **dots)
        low, high = self.runs[column].min(), self.runs[column].max()
        left.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.02))
        left.set_ylabel(f"{self.scored_on} accuracy")
        right.axhline(0.0, color="gray", linewidth=0.8)
        right.set_ylabel(f"minus {self.reference} (points, same seed)")
        for axis in (left, right):
            axis.set_xticks(positions)
            axis.set_xticklabels(names, rotation=30, ha="right")
        figure.suptitle(
            title
            or f"Balancers compared ({self.scored_on} accuracy, "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
        )
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=150, bbox_inches="tight")
        return figure

    def _paired(self, name, column):
        mine = self.runs[self.runs["balancer"] == name].set_index("seed")
        ref = self.runs[self.runs["balancer"] == self.reference]
        ref = ref.set_index("seed")
        seeds = sorted(set(mine.index) & set(ref.index))
        return np.array(
            [mine.loc[s, column] - ref.loc[s, column] for s in seeds], float
        )


def _labelled(balancers):
    """`[(label, spec)]` from a sequence of names or a dict."""
    if isinstance(balancers, dict):
        items = list(balancers.items())
    else:
        items = []
        for spec in balancers:
            if spec is None:
                items.append((JOINT, None))
            elif isinstance(spec, str):
                items.append((spec, spec))
            else:
                raise TypeError(
                    "compare_balancers: `balancers` lists registered names "
                    f"(str) or None; got {spec!r}. Pass a dict "
                    "{label: factory} to compare configured balancers."
                )
    if not items:
        raise ValueError("compare_balancers: `balancers` is empty.")
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"compare_balancers: balancer labels repeat: {labels}."
        )
    for label, spec in items:
        if isinstance(spec, str) and spec.lower() != JOINT:
            if spec.lower() not in olm_balancers.REGISTRY:
                raise ValueError(
                    f"compare_balancers: unknown balancer {spec!r} "
                    f"(label {label!r}); registered: "
                    f"{sorted(olm_balancers.REGISTRY)}."
                )
        elif spec is not None and not isinstance(spec, str):
            if not callable(spec):
                raise TypeError(
                    f"compare_balancers: balancer {label!r} must be a "
                    "registered name, None, or a callable returning a new "
                    f"balancer for each run; got {spec!r}."
                )
    return items


def _resolve(spec):
    """A fresh balancer argument for one run."""
    if spec is None or (isinstance(spec, str) and spec.lower() == JOINT):
        return None
    if isinstance(spec, str):
        return spec
    return spec()


def _as_arrays(x, argument):
    """Dict or list of numpy arrays (the forms `compare_balancers` takes)."""
    if isinstance(x, dict):
        return {k: np.asarray(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [np.asarray(v) for v in x]
    raise TypeError(
        f"compare_balancers: `{argument}` must be a dict or list of arrays "
        f"(one per modality); got {type(x).__name__}. The comparison cuts "
        "its own held-out split, so it takes arrays."
    )


def _pair(data, argument):
    """`(inputs, labels)` arrays of a `(x, y)` argument."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            f"compare_balancers: `{argument}` must be a tuple `(x, y)` of "
            f"arrays; got {type(data).__name__}."
        )
    return _as_arrays(data[0], argument), np.asarray(data[1])


def _take(x, index):
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return [v[index] for v in x]


def _length(x):
    first = next(iter(x.values())) if isinstance(x, dict) else x[0]
    return len(first)


def _split(x, y, fraction, rng, argument):
    """`(kept, cut)` of arrays: `fraction` of the samples cut at random."""
    n = len(y)
    count = int(round(fraction * n))
    if not 0 < count < n:
        raise ValueError(
            f"compare_balancers: `{argument}`={fraction} of {n} samples "
            "leaves an empty split."
        )
    order = rng.permutation(n)
    cut, kept = order[:count], order[count:]
    return (_take(x, kept), y[kept]), (_take(x, cut), y[cut])


def _needs_held_out(build_model, items):
    """Whether any compared balancer reads held-out data."""
    for _, spec in items:
        balancer = _resolve(spec)
        if balancer is None:
            continue
        if isinstance(balancer, str):
            balancer = olm_balancers.get(balancer)
        if balancer.needs_held_out:
            return True
    return False


def compare_balancers(
    build_model,
    x,
    y,
    balancers=(JOINT, "heads", "olm"),
    *,
    validation_data=None,
    validation_split=0.15,
    held_out_data=None,
    held_out_split=0.1,
    test_data=None,
    seeds=(0, 1, 2),
    epochs=10,
    batch_size=32,
    reference=None,
    compile_kwargs=None,
    fit_kwargs=None,
    split_seed=0,
    verbose=1,
):
    """Trains several balancers on the same data and seeds; returns a table.

    For every seed and balancer: the random seed is set
    (`keras.utils.set_random_seed(seed)`), `build_model(balancer)` builds a
    fresh model (the same initial weights for every balancer of a seed, if
    the builder creates its layers after the seed is set), the model is
    compiled unless the builder compiled it, trained on the same training
    samples for `epochs` epochs, and the weights of the epoch with the
    best fused validation accuracy are scored once on the test data.

    The splits are cut once (`split_seed`), before any training:
    validation (unless `validation_data` is given) and, when a compared
    balancer reads held-out losses (OLM, G-Blend), a held-out split
    (unless `held_out_data` is given). Every balancer trains on the same
    remaining samples, so joint training is not given the samples OLM
    holds out.

    Args:
        build_model: callable `balancer -> BalancedMultimodalModel`. Takes
            the `balancer=` argument of the model (None for joint
            training, a registered name, or a balancer instance) and
            returns a new model, compiled or not.
        x: dict or list of numpy arrays, one per modality: the training
            inputs.
        y: array of integer labels.
        balancers: sequence of registered names (`"joint"` or `None` for
            joint training), or a dict from a label to a registered name,
            None, or a zero-argument callable returning a new balancer
            (for configured balancers, e.g.
            `{"pmr+stop": lambda: keras_olm.PMR(head_stopping=...)}`).
            Defaults to `("joint", "heads", "olm")`.
        validation_data: tuple `(x, y)` of arrays or `None`. Picks each
            run's checkpoint. Defaults to `None`: `validation_split` of
            the training arrays.
        validation_split: float. Share of the training arrays cut for
            validation when `validation_data` is None. Defaults to
            `0.15`.
        held_out_data: tuple `(x, y)` of arrays or `None`. Read by the
            balancers that measure held-out losses. Defaults to `None`:
            `held_out_split` of the remaining training arrays, cut only
            when such a balancer is compared.
        held_out_split: float. Defaults to `0.1`.
        test_data: tuple `(x, y)` of arrays or `None`. Scores each run's
            checkpoint once. Defaults to `None`: the table reports the
            validation accuracies that picked the checkpoints (optimistic)
            and says so in `scored_on`.
        seeds: sequence of int. Defaults to `(0, 1, 2)`.
        epochs: int. Defaults to `10`.
        batch_size: int. Defaults to `32`.
        reference: str or `None`. The label of the paired differences'
            reference. Defaults to the first balancer.
        compile_kwargs: dict or `None`. `model.compile` arguments for
            models the builder did not compile. Defaults to
            `{"optimizer": "adam"}` (a new Adam per run).
        fit_kwargs: dict or `None`. More `model.fit` arguments (e.g.
            `callbacks`, `class_weight`). Defaults to `None`.
        split_seed: int. Seed of the validation and held-out cuts.
            Defaults to `0`.
        verbose: int. `1` prints one line per run. Defaults to `1`.

    Returns:
        A `BalancerComparison` (`.table`, `.runs`, `.plot()`).

    Example:

    ```python
    import keras
    import keras_olm

    x, y = keras_olm.synthetic.make_imbalanced(1024, seed=0)
    test = keras_olm.synthetic.make_imbalanced(512, seed=1)

    def build(balancer):
        encoders = {
            m: keras.Sequential([keras.layers.Dense(32, activation="relu")])
            for m in x
        }
        return keras_olm.BalancedMultimodalModel(
            encoders, num_classes=4, balancer=balancer
        )

    result = keras_olm.compare_balancers(
        build, x, y, test_data=test, epochs=5, seeds=(0, 1)
    )
    print(result.table)
    result.plot("balancers.png")
    ```
    """
    import pandas as pd

    items = _labelled(balancers)
    labels = [label for label, _ in items]
    reference = labels[0] if reference is None else reference
    if reference not in labels:
        raise ValueError(
            f"compare_balancers: reference {reference!r} is not among the "
            f"compared balancers {labels}."
        )
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("compare_balancers: `seeds` is empty.")
    x = _as_arrays(x, "x")
    y = np.asarray(y)
    if _length(x) != len(y):
        raise ValueError(
            f"compare_balancers: `x` has {_length(x)} samples and `y` {len(y)}."
        )
    rng = np.random.default_rng(split_seed)
    if validation_data is None:
        (x, y), validation_data = _split(
            x, y, validation_split, rng, "validation_split"
        )
    else:
        validation_data = _pair(validation_data, "validation_data")
    held_out = None
    if _needs_held_out(build_model, items):
        if held_out_data is None:
            (x, y), held_out = _split(
                x, y, held_out_split, rng, "held_out_split"
            )
        else:
            held_out = _pair(held_out_data, "held_out_data")
    if test_data is not None:
        test_data = _pair(test_data, "test_data")
    scored = test_data if test_data is not None else validation_data
    scored_on = "test" if test_data is not None else "validation"

    rows, probabilities, curves = [], {}, {}
    for seed in seeds:
        for label, spec in items:
            keras.utils.set_random_seed(seed)
            model = build_model(_resolve(spec))
            if not model.compiled:
                kwargs = dict(compile_kwargs or {"optimizer": "adam"})
                if isinstance(kwargs.get("optimizer"), keras.Optimizer):
                    kwargs["optimizer"] = kwargs["optimizer"].from_config(
                        kwargs["optimizer"].get_config()
                    )
                model.compile(**kwargs)
            best = BestCheckpoint(validation_data)
            extra = dict(fit_kwargs or {})
            callbacks = [*extra.pop("callbacks", []), best]
            reads_held_out = model.balancer.needs_held_out
            model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                held_out_data=held_out if reads_held_out else None,
                callbacks=callbacks,
                verbose=0,
                **extra,
            )
            model.set_weights(best.best_weights)
            logits = model.predict_heads(scored[0], verbose=0)["fused"]
            probs = keras.ops.convert_to_numpy(
                keras.ops.softmax(keras.ops.cast(logits, "float32"), -1)
            )
            accuracy = float(np.mean(probs.argmax(-1) == scored[1]))
            rows.append(
                {
                    "balancer": label,
                    "seed": seed,
                    "best_epoch": best.best_epoch,
                    "val_accuracy": best.best,
                    "test_accuracy": (
                        accuracy if test_data is not None else math.nan
                    ),
                    "seconds_per_epoch": best.seconds_per_epoch(),
                }
            )
            probabilities[(label, seed)] = probs
            curves[(label, seed)] = best.history
            if verbose:
                print(
                    f"{label}, seed {seed}: {scored_on} accuracy "
                    f"{accuracy:.4f} (best epoch {best.best_epoch} of "
                    f"{epochs})",
                    flush=True,
                )
    runs = pd.DataFrame(rows)
    table = _table(runs, labels, reference, scored_on)
    return BalancerComparison(
        runs=runs,
        table=table,
        reference=reference,
        scored_on=scored_on,
        probabilities=probabilities,
        curves=curves,
    )


def _table(runs, labels, reference, scored_on):
    """Means, spreads and paired differences, one row per balancer."""
    import pandas as pd

    column = "test_accuracy" if scored_on == "test" else "val_accuracy"
    wide = runs.pivot(index="seed", columns="balancer", values=column)
    rows = {}
    for label in labels:
        mine = runs[runs["balancer"] == label]
        diff = (wide[label] - wide[reference]).to_numpy(float)
        rows[label] = {
            "accuracy": wide[label].mean(),
            "accuracy_std": wide[label].std(ddof=0),
            f"vs_{reference}": diff.mean(),
            f"vs_{reference}_std": diff.std(),
            "wins": f"{int(np.sum(diff > 0))}/{len(diff)}",
            "best_epoch": mine["best_epoch"].mean(),
            "seconds_per_epoch": mine["seconds_per_epoch"].mean(),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "balancer"
    return table
