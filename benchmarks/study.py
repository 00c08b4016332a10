"""Every balancer, with and without head stopping, under two training regimes.

Problems: the family of generated problems (`keras_olm.synthetic.PROBLEMS`)
and the two embedded sets (`digits`, `rooms`).

- Family: 10% of the 2,000 generated training samples is held out first
  (the held-out losses of OLM, G-Blend and head stopping; no method trains
  on it), 10% of the rest is the validation split (checkpoint selection
  only), the rest (1,620 samples) trains; the test set is 2,000 fresh
  samples. Encoders: two Dense(32, ReLU) layers per modality.
- Embedded sets: the fixed splits of `benchmarks/embedded_data.py` (the
  same as `compare.py`: the pool, its `held_out` 10%, `val`, test) and its
  small CNN encoders (width 16, 3 blocks); the seed changes the initial
  weights and the batch order.

Every method of one (problem, seed, regime) trains on the same samples
from the same initial encoder weights. One run trains to the largest epoch
count and records after every epoch the fused validation accuracy, every
head's test accuracy and raw logit norm, OLM's coefficients and λ, the
head-stopping gates (and the epoch each head stopped) and the seconds
since training began. With Adam at a fixed learning rate, epoch E of a
longer run is the same model as a run of E epochs, so one run gives every
epoch count. For each epoch count E the report gives the fused test
accuracy after epoch E ("final") and at the epoch of best validation
accuracy among epochs 1..E ("best val"), mean ± std over seeds, and the
per-seed paired differences against plain joint training (`joint`,
`balancer=None`), the per-head losses without modulation (`heads`) and
PMR (`pmr`).

Methods (`--methods`; default: all of `study_methods()`):

- every name of `keras_olm.balancers.REGISTRY` but the alias `multihead`,
  with its registered defaults (`joint` is `balancer=None`), and, for
  every class that takes head stopping (`accepts_head_stopping`),
  `<name>+stop` (`head_stopping=HeadStopping()`); OLM's default already
  stops heads, so `olm+stop` is `olm` and the study lists `olm-nostop`
  (`head_stopping=None`) instead;
- OLM's modulation variants, without head stopping and as `<name>+stop`
  with it: `olm-paper` (`OLM.paper()`), `olm-authors`
  (`OLM.authors(steps_per_epoch)` with the run's steps per epoch),
  `olm-closed2` and `olm-closed-neg2` (`ClosedForm(strength=±2)`) and
  `olm-closed0` (`ClosedForm(strength=0)`: OLM without modulation, i.e.
  `heads` with OLM's held-out schedule; `olm-closed0+stop` is what the
  default's modulation must beat);
- the former method names of `olm_defaults.py` (`legacy_methods()`, and
  `olm-stop<p>[d<x>][m<x>]`, `heads-stop<p>...`) are accepted: each
  varies one part of today's `OLM()` (those that name no coefficient law
  modulate by `LogitLossDescent`, and all of them stop heads).

Regimes (`--regime`, part of every record's key):

- `default`: Adam 1e-3 (0.003 on the embedded sets), batch 64, no weight
  decay, no dropout; 12 / 40 / 100 epochs.
- `authors`: the authors' regularization trained to convergence: L2 1e-4
  on the kernels (`keras.regularizers.L2(1e-4)`, the gradient 2e-4·w of
  torch's `Adam(weight_decay=2e-4)`) of the encoders and, as torch's Adam
  decays every parameter, of the heads too (`--no-l2-heads`: encoders
  only; its records carry the regime `authors-encoder-l2`), dropout 0.5
  after each encoder layer, batch 96, Adam 1e-3; 12 / 40 / 100 epochs.
- `authors-exact`: the same regularization with Adam 1e-4 for 10 epochs,
  meant for data large enough to train at that rate.

    KERAS_BACKEND=tensorflow python benchmarks/study.py --regime default
    KERAS_BACKEND=tensorflow python benchmarks/study.py --regime authors
    python benchmarks/study.py --report
    python benchmarks/study.py --report --summary olm
    python benchmarks/study.py --report --paired olm --regime default

`--report` prints one table per (regime, epoch count) and the best
configuration per problem; `--summary METHOD` checks a candidate default
against the targets (within 1 point of the best configuration; at least 1
point above joint) per problem and epoch count; `--paired METHOD` gives
its paired differences against heads and joint, one row per problem.

Runs go seed-major (an interrupted study has every problem at fewer
seeds); one jsonl line is appended to `--out` per finished run, and runs
already there (same problem, method, seed and regime, at least as many
epochs) are skipped, so an interrupted study resumes.
"""

import argparse
import json
import math
import os
import re
import sys
import time

import keras
import numpy as np

import keras_olm
from keras_olm import balancers as olm_balancers
from keras_olm.synthetic import PROBLEMS
from keras_olm.synthetic import make_problem

# The embedded sets' loaders beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedded_data  # noqa: E402

#: The embedded sets this script also runs (see the module docstring).
EMBEDDED = ("digits", "rooms")
DEFAULT_OUT = "benchmarks/results/study.jsonl"
#: Registry names that are aliases of another entry.
ALIASES = ("multihead",)
#: The references of the paired columns.
REFERENCES = ("joint", "heads", "pmr")
#: One point of accuracy: the margin of `--summary`.
POINT = 0.01

REGIMES = {
    "default": dict(
        learning_rate=1e-3,
        embedded_learning_rate=3e-3,
        batch_size=64,
        l2=0.0,
        dropout=0.0,
        epochs=(12, 40, 100),
    ),
    "authors": dict(
        learning_rate=1e-3,
        embedded_learning_rate=1e-3,
        batch_size=96,
        l2=1e-4,
        dropout=0.5,
        epochs=(12, 40, 100),
    ),
    "authors-exact": dict(
        learning_rate=1e-4,
        embedded_learning_rate=1e-4,
        batch_size=96,
        l2=1e-4,
        dropout=0.5,
        epochs=(10,),
    ),
}


# --- methods ---------------------------------------------------------------


def _olm_variants():
    """OLM variant name -> `f(steps_per_epoch, head_stopping)`."""
    olm = keras_olm.OLM
    closed = olm_balancers.ClosedForm
    return {
        "olm-paper": lambda spe, stop: olm.paper(head_stopping=stop),
        "olm-authors": lambda spe, stop: olm.authors(spe, head_stopping=stop),
        "olm-closed2": lambda spe, stop: olm(
            coefficient_law=closed(strength=2.0), head_stopping=stop
        ),
        "olm-closed-neg2": lambda spe, stop: olm(
            coefficient_law=closed(strength=-2.0), head_stopping=stop
        ),
        "olm-closed0": lambda spe, stop: olm(
            coefficient_law=closed(strength=0.0), head_stopping=stop
        ),
    }


def _default_stops(name):
    """Whether registered balancer `name` stops heads by default."""
    cls = olm_balancers.REGISTRY[name]
    if not cls.accepts_head_stopping:
        return False
    return olm_balancers.get(name).head_stopping is not None


def study_methods():
    """The methods of the full study, in table order.

    Every registered balancer (but the aliases; `joint` and `heads`
    first) with its defaults, then `<name>+stop` (or `<name>-nostop`
    when its default stops heads) for the classes that take head
    stopping, then OLM's variants, each without and with head stopping.
    """
    names = []
    registry = olm_balancers.REGISTRY
    # The references first: joint, heads, then the registry's order.
    first = [n for n in ("joint", "heads") if n in registry]
    for name in [*first, *(n for n in registry if n not in first)]:
        cls = registry[name]
        if name in ALIASES:
            continue
        names.append(name)
        if cls.accepts_head_stopping:
            names.append(
                f"{name}-nostop" if _default_stops(name) else f"{name}+stop"
            )
    for name in _olm_variants():
        names += [name, f"{name}+stop"]
    return names


def legacy_methods():
    """The method names of the former `olm_defaults.py` -> `f(spe)`."""
    olm = keras_olm.OLM
    closed, descent = olm_balancers.ClosedForm, olm_balancers.LogitLossDescent
    held_out = olm_balancers.HeldOutSchedule
    still = olm_balancers.Rebalancing(momentum=0.0)  # λ of every step

    def closed_form(strength, rebalancing=still):
        return lambda spe: olm(
            coefficient_law=closed(strength=strength), rebalancing=rebalancing
        )

    return {
        "olm-modulated": lambda spe: olm(coefficient_law=closed(strength=-2.0)),
        "olm-lambda-every-step": lambda spe: olm(rebalancing=still),
        "olm-optimizer": lambda spe: olm(
            coefficient_law=descent(), rebalancing=still
        ),
        "olm-held-out-every-step": lambda spe: olm(held_out=held_out("step")),
        "olm-held-out-every-10": lambda spe: olm(held_out=held_out(every=10)),
        "olm-held-out-every-epoch": lambda spe: olm(
            held_out=held_out(every=spe)
        ),
        # Eq. 8 without the temperature; the optimizer path's options.
        "olm-raw-softmax": lambda spe: olm(
            rebalancing=olm_balancers.Rebalancing(temperature=None)
        ),
        "olm-optimizer-sgd": lambda spe: olm(
            coefficient_law=descent(optimizer="sgd")
        ),
        "olm-optimizer-ce-grad": lambda spe: olm(
            coefficient_law=descent(coefficient_ce_grad=True)
        ),
        "olm-optimizer-faithful": lambda spe: olm(
            coefficient_law=descent(targets="faithful")
        ),
        "closed-1": closed_form(1.0),
        "closed-0.5": closed_form(0.5),
        "closed-1-slow": closed_form(
            1.0, olm_balancers.Rebalancing(momentum=0.9)
        ),
        "closed-2": closed_form(2.0),
        "closed-neg1": closed_form(-1.0),
        "closed-neg2": closed_form(-2.0),
        "closed-neg3": closed_form(-3.0),
    }


def _patience_method(method):
    """`olm-stop<p>[d<x>][m<x>]` / `heads-stop<p>...`, or `None`."""
    for prefix, strength in (("olm-stop", None), ("heads-stop", 0.0)):
        if not method.startswith(prefix):
            continue
        parts = re.findall(r"([dm]?)([0-9.]+)", method[len(prefix) :])
        names = {"": "patience", "d": "min_delta", "m": "momentum"}
        kwargs = {names[k]: float(v) for k, v in parts}
        # <p> counts held-out measurements (every 20 steps here).
        kwargs["patience"] = int(kwargs["patience"]) * 20
        olm_kwargs = {"head_stopping": olm_balancers.HeadStopping(**kwargs)}
        if strength is not None:
            olm_kwargs["coefficient_law"] = olm_balancers.ClosedForm(
                strength=strength
            )
        return keras_olm.OLM(**olm_kwargs)
    return None


def make_balancer(method, steps_per_epoch):
    """The `balancer=` argument of `method` (see the module docstring).

    Args:
        method: str. A method name.
        steps_per_epoch: int. Training steps in one epoch of the run
            (`olm-authors`' reference window).

    Returns:
        `None` (plain joint training) or a `Balancer`.
    """
    if method == "joint":
        return None
    stop = None
    base = method
    if method.endswith("+stop"):
        base, stop = method[: -len("+stop")], olm_balancers.HeadStopping()
    elif method.endswith("-nostop") and method[: -len("-nostop")] in (
        olm_balancers.REGISTRY
    ):
        return olm_balancers.get(method[: -len("-nostop")], head_stopping=None)
    if base in olm_balancers.REGISTRY and base != "joint":
        if stop is None:
            return olm_balancers.get(base)
        return olm_balancers.get(base, head_stopping=stop)
    variants = _olm_variants()
    if base in variants:
        return variants[base](steps_per_epoch, stop)
    if stop is None:
        legacy = legacy_methods()
        if method in legacy:
            return legacy[method](steps_per_epoch)
        balancer = _patience_method(method)
        if balancer is not None:
            return balancer
    raise ValueError(
        f"Unknown method {method!r}; choose from {study_methods()}, "
        f"{list(legacy_methods())}, olm-stop<p>..., heads-stop<p>..."
    )


# --- one run -----------------------------------------------------------


def regime_key(regime, l2_heads=True):
    """The regime as records name it."""
    if not l2_heads and REGIMES[regime]["l2"]:
        return f"{regime}-encoder-l2"
    return regime


def encoder(problem, modality, regime):
    """One modality's encoder under `regime` (a `REGIMES` name)."""
    settings = REGIMES[regime]
    l2, dropout = settings["l2"], settings["dropout"]
    regularizer = keras.regularizers.L2(l2) if l2 else None
    if problem in EMBEDDED:
        return embedded_data.cnn_encoder(
            16,
            3,
            name=f"{modality}_encoder",
            kernel_regularizer=regularizer,
            dropout=dropout,
        )
    layers = []
    for _ in range(2):
        layers.append(
            keras.layers.Dense(
                32, activation="relu", kernel_regularizer=regularizer
            )
        )
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers)


def splits(problem, seed):
    """(train, held_out, validation, test), each an `(x, y)` tuple."""
    if problem in EMBEDDED:
        parts = embedded_data.make_splits(embedded_data.load_dataset(problem))
        return tuple(parts[k] for k in ("pool", "held_out", "val", "test"))
    data = make_problem(problem, 2000, seed=seed)
    test = make_problem(problem, 2000, seed=1000 + seed)
    # The held-out part is taken first; then validation from the rest.
    rest, held_out = keras_olm.split_held_out(data, 0.1, seed=seed)
    train, validation = keras_olm.split_held_out(rest, 0.1, seed=100 + seed)
    return train, held_out, validation, test


def build_model(problem, method, regime, train, num_classes, l2_heads=True):
    """The model of one run, built, its heads regularized as the regime
    says; returns `(model, steps_per_epoch)`."""
    settings = REGIMES[regime]
    steps_per_epoch = math.ceil(len(train[1]) / settings["batch_size"])
    model = keras_olm.BalancedMultimodalModel(
        {m: encoder(problem, m, regime) for m in train[0]},
        num_classes=num_classes,
        balancer=make_balancer(method, steps_per_epoch),
    )
    # Builds every layer, so that the heads' kernels exist.
    model.head_logits({m: v[:2] for m, v in train[0].items()})
    if settings["l2"] and l2_heads:
        for head in model.heads.values():
            for variable in head.trainable_weights:
                if len(variable.shape) >= 2:
                    variable.regularizer = keras.regularizers.L2(settings["l2"])
    return model, steps_per_epoch


class Curves(keras.callbacks.Callback):
    """Per epoch: fused val/test accuracy, head accuracy and logit norms,
    OLM's coefficients and λ, head-stopping gates, and the seconds since
    training began (at the epoch's end, before its evaluation)."""

    def __init__(self, validation, test):
        super().__init__()
        self.validation, self.test = validation, test
        self.rows = []

    def _logits(self, x):
        out = self.model.head_logits(x)
        return {h: keras.ops.convert_to_numpy(v) for h, v in out.items()}

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Seconds since training began, before this epoch's evaluation.
        seconds = time.perf_counter() - self.start
        val = self._logits(self.validation[0])
        test = self._logits(self.test[0])
        row = {
            "val": float(
                np.mean(val["fused"].argmax(-1) == self.validation[1])
            ),
            "test": {
                h: float(np.mean(v.argmax(-1) == self.test[1]))
                for h, v in test.items()
            },
            "norm": {
                h: float(np.mean(np.linalg.norm(v, axis=-1)))
                for h, v in test.items()
            },
            "seconds": seconds,
        }
        balancer = self.model.balancer
        if isinstance(balancer, keras_olm.OLM):
            row["coef"] = keras.ops.convert_to_numpy(
                balancer.coefficients
            ).tolist()
            row["lambda"] = keras.ops.convert_to_numpy(
                balancer.lambdas
            ).tolist()
        stopping = getattr(balancer, "head_stopping", None)
        if stopping is not None:
            row["gate"] = keras.ops.convert_to_numpy(stopping.gates).tolist()
        self.rows.append(row)


def stopped_epochs(heads, curves):
    """Head name -> the first epoch (1-based) its gate was 0, or `None`;
    the fused head is never stopped. Empty without head stopping."""
    if not curves or "gate" not in curves[0]:
        return {}
    out = {}
    for i, head in enumerate(heads[:-1]):
        out[head] = next(
            (e + 1 for e, row in enumerate(curves) if row["gate"][i] == 0.0),
            None,
        )
    return out


def run(problem, method, seed, epochs, regime="default", l2_heads=True):
    """Trains one method; returns its record (a dict, one jsonl line)."""
    settings = REGIMES[regime]
    train, held_out, validation, test = splits(problem, seed)
    num_classes = int(
        max(train[1].max(), validation[1].max(), test[1].max()) + 1
    )
    keras.utils.set_random_seed(seed)
    model, steps_per_epoch = build_model(
        problem, method, regime, train, num_classes, l2_heads
    )
    embedded = problem in EMBEDDED
    learning_rate = settings[
        "embedded_learning_rate" if embedded else "learning_rate"
    ]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    curves = Curves(validation, test)
    start = time.perf_counter()
    model.fit(
        *train,
        epochs=epochs,
        batch_size=settings["batch_size"],
        held_out_data=held_out if model.balancer.needs_held_out else None,
        callbacks=[curves],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {
        "problem": problem,
        "method": method,
        "seed": seed,
        "regime": regime_key(regime, l2_heads),
        "epochs": epochs,
        "seconds": seconds,
        "heads": model.head_names,
        "stopped_epoch": stopped_epochs(model.head_names, curves.rows),
        "settings": {
            "backend": keras.backend.backend(),
            "learning_rate": learning_rate,
            "batch_size": settings["batch_size"],
            "l2": settings["l2"],
            "l2_heads": bool(l2_heads and settings["l2"]),
            "dropout": settings["dropout"],
            "steps_per_epoch": steps_per_epoch,
        },
        "curves": curves.rows,
    }


# --- records and report ------------------------------------------------


def load(path):
    """The records of a jsonl file (`[]` when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def key(record):
    """(problem, method, seed, regime); records without a regime are
    `"default"`'s."""
    return (
        record["problem"],
        record["method"],
        record["seed"],
        record.get("regime", "default"),
    )


def at(record, epochs):
    """(final, best-val) fused test accuracy after `epochs` epochs."""
    rows = record["curves"][:epochs]
    best = int(np.argmax([r["val"] for r in rows]))
    return rows[-1]["test"]["fused"], rows[best]["test"]["fused"]


def fmt(values, sign="+"):
    values = np.asarray(values, float)
    return f"{values.mean():{sign}.3f} ± {values.std():.3f}"


def _index(records):
    """{(regime, problem, method): {seed: record}}; the longest run wins."""
    runs = {}
    for r in records:
        problem, method, seed, regime = key(r)
        seeds = runs.setdefault((regime, problem, method), {})
        if seed not in seeds or r["epochs"] > seeds[seed]["epochs"]:
            seeds[seed] = r
    return runs


def _ordered(values, order):
    values = list(dict.fromkeys(values))
    first = [v for v in order if v in values]
    return first + [v for v in values if v not in first]


def _accuracies(runs, regime, problem, method, epochs):
    """{seed: (final, best val)} of the runs with >= `epochs` epochs."""
    return {
        s: at(r, epochs)
        for s, r in runs.get((regime, problem, method), {}).items()
        if r["epochs"] >= epochs
    }


def _paired(mine, theirs):
    """Per-seed differences `(n, 2)` over the seeds both have."""
    seeds = sorted(set(mine) & set(theirs))
    return np.array(
        [np.subtract(mine[s], theirs[s]) for s in seeds], float
    ).reshape(-1, 2)


def report(records, epoch_counts, references=REFERENCES):
    """One markdown table per (regime, epoch count), then per problem the
    configuration with the highest mean, final and best val."""
    runs = _index(records)
    regimes = _ordered((k[0] for k in runs), REGIMES)
    problems = _ordered((k[1] for k in runs), (*PROBLEMS, *EMBEDDED))
    methods = _ordered((k[2] for k in runs), study_methods())
    lines = []
    header = "| problem | method | n | final | best val |"
    rule = "|---|---|---|---|---|"
    for ref in references:
        header += f" − {ref} final | − {ref} best val |"
        rule += "---|---|"
    for regime in regimes:
        for epochs in epoch_counts:
            table, best = [], []
            for problem in problems:
                means = {}
                for method in methods:
                    acc = _accuracies(runs, regime, problem, method, epochs)
                    if not acc:
                        continue
                    values = np.array(list(acc.values()))
                    means[method] = values.mean(axis=0)
                    cells = [fmt(values[:, 0], ""), fmt(values[:, 1], "")]
                    for ref in references:
                        theirs = _accuracies(runs, regime, problem, ref, epochs)
                        diff = _paired(acc, theirs)
                        if method == ref or not len(diff):
                            cells += ["–", "–"]
                        else:
                            cells += [fmt(diff[:, 0]), fmt(diff[:, 1])]
                    table.append(
                        f"| {problem} | {method} | {len(acc)} | "
                        + " | ".join(cells)
                        + " |"
                    )
                if means:
                    top = [
                        max(means, key=lambda m: means[m][i]) for i in (0, 1)
                    ]
                    best.append(
                        f"{problem}: {top[0]} {means[top[0]][0]:.3f} / "
                        f"{top[1]} {means[top[1]][1]:.3f}"
                    )
            if not table:
                continue
            lines += [
                f"\n### {regime}, {epochs} epochs: fused test accuracy, "
                "final / at the best-validation epoch (mean ± std over "
                "seeds; n = seeds; differences paired per seed)\n",
                header,
                rule,
                *table,
                "\nBest configuration per problem (highest mean, final / "
                "best val): " + "; ".join(best) + ".",
            ]
    return "\n".join(lines)


def summary(records, method, epoch_counts):
    """For a candidate default: its gap to the best configuration and its
    difference from joint, per problem, and how many problems meet the
    targets (within 1 point of the best; at least 1 point above joint).

    The gap to the best is the largest mean paired difference (other -
    `method`, over the seeds both ran) among all methods, at least 0; the
    difference from joint is the mean paired difference.
    """
    runs = _index(records)
    regimes = _ordered((k[0] for k in runs), REGIMES)
    problems = _ordered((k[1] for k in runs), (*PROBLEMS, *EMBEDDED))
    lines = []
    for regime in regimes:
        rows, counts = [], {}
        for problem in problems:
            cells = []
            for epochs in epoch_counts:
                mine = _accuracies(runs, regime, problem, method, epochs)
                if not mine:
                    cells += ["–", "–"]
                    continue
                gaps = np.zeros(2)
                best = [method, method]
                for (g, p, other), _ in runs.items():
                    if g != regime or p != problem or other == method:
                        continue
                    diff = _paired(
                        _accuracies(runs, regime, problem, other, epochs),
                        mine,
                    )
                    if not len(diff):
                        continue
                    for i in (0, 1):
                        if diff[:, i].mean() > gaps[i]:
                            gaps[i], best[i] = diff[:, i].mean(), other
                joint = _paired(
                    mine, _accuracies(runs, regime, problem, "joint", epochs)
                )
                above = joint.mean(axis=0) if len(joint) else None
                count = counts.setdefault(epochs, np.zeros(5, int))
                count[0] += 1
                count[1:3] += gaps <= POINT + 1e-9
                if above is not None:
                    count[3:5] += above >= POINT - 1e-9
                cells.append(
                    f"{gaps[0]:.3f} ({best[0]}) / {gaps[1]:.3f} ({best[1]})"
                )
                cells.append(
                    "–"
                    if above is None
                    else f"{above[0]:+.3f} / {above[1]:+.3f}"
                )
            if any(c != "–" for c in cells):
                rows.append(f"| {problem} | " + " | ".join(cells) + " |")
        if not rows:
            continue
        header = "| problem |" + "".join(
            f" {e} ep: gap to best, final / best val | {e} ep: − joint |"
            for e in epoch_counts
        )
        lines += [
            f"\n### {method}, {regime}: gap to the best configuration and "
            "difference from joint (fused test accuracy, final / best val,"
            " mean over seeds)\n",
            header,
            "|---|" + "---|---|" * len(epoch_counts),
            *rows,
            "",
        ]
        for epochs, c in counts.items():
            lines.append(
                f"- {epochs} epochs, {c[0]} problems: within 1 point of the "
                f"best on {c[1]} (final) and {c[2]} (best val); at least 1 "
                f"point above joint on {c[3]} (final) and {c[4]} (best val)."
            )
    return "\n".join(lines)


def paired_summary(
    records, method, epoch_counts, references=("heads", "joint")
):
    """One row per (regime, problem): `method`'s paired differences
    against each of `references` at every epoch count.

    Cells are "final / best val" differences in fused test accuracy, mean
    ± std over the seeds all three ran; the last column gives the range
    of the method's coefficients over all epochs and seeds.
    """
    runs = _index(records)
    lines = [
        "| regime | problem | n | "
        + " | ".join(
            f"{e} ep: − {ref}" for e in epoch_counts for ref in references
        )
        + " | coefficients, min-max over all epochs |",
        "|---|---|---|" + "---|" * len(epoch_counts) * len(references) + "---|",
    ]
    regimes = _ordered((k[0] for k in runs), REGIMES)
    problems = _ordered((k[1] for k in runs), (*PROBLEMS, *EMBEDDED))
    for regime in regimes:
        for problem in problems:
            mine = runs.get((regime, problem, method), {})
            seeds = sorted(
                s
                for s in mine
                if all(
                    s in runs.get((regime, problem, ref), {})
                    for ref in references
                )
            )
            if not seeds:
                continue
            cells = []
            for epochs in epoch_counts:
                for ref in references:
                    theirs = runs[regime, problem, ref]
                    diff = np.array(
                        [
                            np.subtract(
                                at(mine[s], epochs), at(theirs[s], epochs)
                            )
                            for s in seeds
                        ]
                    )
                    cells.append(f"{fmt(diff[:, 0])} / {fmt(diff[:, 1])}")
            coef = [
                c
                for s in seeds
                for row in mine[s]["curves"]
                for c in row.get("coef", [])
            ]
            span = f"{min(coef):.2f}-{max(coef):.2f}" if coef else "–"
            lines.append(
                f"| {regime} | {problem} | {len(seeds)} | "
                + " | ".join(cells)
                + f" | {span} |"
            )
    return "\n".join(lines)


# --- command line --------------------------------------------------------


def default_epochs(records):
    """The epoch counts of the records' regimes that their runs reach, or
    the longest run's when none does."""
    if not records:
        return []
    longest = max(r["epochs"] for r in records)
    regimes = {key(r)[3].replace("-encoder-l2", "") for r in records}
    counts = {
        e
        for g in regimes
        if g in REGIMES
        for e in REGIMES[g]["epochs"]
        if e <= longest
    }
    return sorted(counts) or [longest]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--problems",
        nargs="+",
        default=None,
        help=f"default: all of {[*PROBLEMS, *EMBEDDED]}",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="default: all of study_methods() (training); every method "
        "in the file (--report)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)"
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="training: start at this seed (to run seeds in parallel "
        "processes, each with its own --out)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="epoch counts (default: the regime's); runs train to the largest",
    )
    parser.add_argument("--regime", choices=list(REGIMES), default=None)
    parser.add_argument(
        "--no-l2-heads",
        dest="l2_heads",
        action="store_false",
        help="regimes with L2: only the encoders' kernels (default: the "
        "heads' too, as torch's Adam decays every parameter)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument(
        "--report",
        nargs="?",
        const=True,
        default=None,
        help="only print the tables of this file (default: --out)",
    )
    parser.add_argument(
        "--summary",
        default=None,
        help="with --report: the targets' check of this candidate method",
    )
    parser.add_argument(
        "--paired",
        default=None,
        help="with --report: this method's paired differences against "
        "heads and joint, one row per problem",
    )
    parser.add_argument(
        "--references",
        nargs="+",
        default=["heads", "joint"],
        help="with --paired: the references (default: heads joint)",
    )
    parser.add_argument("--list-methods", action="store_true")
    return parser.parse_args(argv)


def _filter(records, args):
    regime = (
        None if args.regime is None else regime_key(args.regime, args.l2_heads)
    )
    return [
        r
        for r in records
        if (regime is None or key(r)[3] == regime)
        and (args.problems is None or r["problem"] in args.problems)
        and (args.methods is None or r["method"] in args.methods)
        and r["seed"] < args.seeds
    ]


def main(argv=None):
    """Runs the study (or, with `--report`, prints its tables)."""
    args = parse_args(argv)
    if args.list_methods:
        print(" ".join(study_methods()))
        return None
    if args.report:
        path = args.out if args.report is True else args.report
        candidate = args.summary or args.paired
        if candidate and args.methods is not None:
            # The candidate and its references are always read.
            args.methods = [
                *args.methods,
                candidate,
                "joint",
                "heads",
                *args.references,
            ]
        records = _filter(load(path), args)
        epochs = args.epochs or default_epochs(records)
        if args.paired:
            text = paired_summary(records, args.paired, epochs, args.references)
        elif args.summary:
            text = summary(records, args.summary, epochs)
        else:
            text = report(records, epochs)
        print(text)
        return text
    regime = args.regime or "default"
    epochs = args.epochs or list(REGIMES[regime]["epochs"])
    problems = args.problems or [*PROBLEMS, *EMBEDDED]
    methods = args.methods or study_methods()
    for method in methods:
        make_balancer(method, 1)  # an unknown name fails before any run
    longest = max(epochs)
    record_regime = regime_key(regime, args.l2_heads)
    done = {key(r) for r in load(args.out) if r["epochs"] >= longest}
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # Seed-major: an interrupted study has every problem at fewer seeds.
    for seed in range(args.first_seed, args.seeds):
        for problem in problems:
            for method in methods:
                if (problem, method, seed, record_regime) in done:
                    continue
                record = run(
                    problem, method, seed, longest, regime, args.l2_heads
                )
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
                last = record["curves"][-1]
                print(
                    problem,
                    method,
                    seed,
                    record_regime,
                    f"{record['seconds']:.0f}s",
                    f"fused {last['test']['fused']:.3f}",
                    "coef",
                    last.get("coef"),
                    "stopped",
                    record["stopped_epoch"],
                    flush=True,
                )
    records = [r for r in load(args.out) if key(r)[3] == record_regime]
    text = report(records, epochs)
    print(text)
    return text


if __name__ == "__main__":
    main()
