"""OLM against its references on the family of generated problems.

Every method trains on the same samples of each problem and seed
(`keras_olm.synthetic.make_problem`): 10% of the 2,000 generated training
samples is held out first (OLM's held-out losses; no method trains on it),
10% of the rest is the validation split (checkpoint selection only), and
the rest (1,620 samples) is the training set; the test set is 2,000 fresh
samples. One run trains to the largest epoch count and records, after
every epoch, the fused validation and test accuracy, every head's test
accuracy and raw logit norm, and the coefficients. With Adam at a fixed
learning rate, epoch E of a longer run is the same model as a run of E
epochs, so one run gives every epoch count. For each epoch count E the
tables report the fused test accuracy after epoch E ("final") and at the
epoch of best validation accuracy among epochs 1..E ("best val"), mean ±
std over seeds, and the per-seed paired differences against `"heads"`
and plain joint training (`None`).

    KERAS_BACKEND=tensorflow python benchmarks/olm_defaults.py \\
        --methods joint heads olm --epochs 12 40 100 --seeds 3 \\
        --out benchmarks/results/study.jsonl
    python benchmarks/olm_defaults.py --report benchmarks/results/study.jsonl

The embedded sets are problems too (`--problems digits rooms`): the
splits of `benchmarks/embedded_data.py` (fixed; the same as `compare.py`:
the pool, its `held_out` 10%, `val`, test), its small CNN encoders
(width 16, 3 blocks) and Adam 0.003; the seed changes the initial
weights and the batch order.

Runs already in `--out` (same problem, method, seed, epochs) are skipped,
so an interrupted study resumes.
"""

import argparse
import json
import os
import re
import sys
import time

import keras
import numpy as np

import keras_olm
from keras_olm.synthetic import PROBLEMS
from keras_olm.synthetic import make_problem

# The embedded sets' loaders beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedded_data  # noqa: E402

BATCH_SIZE = 64
#: The embedded sets this script also runs (see the module docstring).
EMBEDDED = ("digits", "rooms")
EMBEDDED_LEARNING_RATE = 3e-3


def methods():
    """Method name -> a function returning the `balancer=` argument."""
    olm = keras_olm.OLM
    parts = keras_olm.balancers
    closed, descent = parts.ClosedForm, parts.LogitLossDescent
    held_out = parts.HeldOutSchedule
    still = parts.Rebalancing(momentum=0.0)  # λ of every step

    def closed_form(strength, rebalancing=still):
        return lambda: olm(
            coefficient_law=closed(strength=strength), rebalancing=rebalancing
        )

    return {
        "joint": lambda: None,
        "heads": lambda: "heads",
        "pmr": lambda: "pmr",
        "olm": lambda: olm(),
        "olm-modulated": lambda: olm(coefficient_law=closed(strength=-2.0)),
        "olm-lambda-every-step": lambda: olm(rebalancing=still),
        "olm-optimizer": lambda: olm(
            coefficient_law=descent(), rebalancing=still
        ),
        "olm-authors": lambda: olm.authors(26),
        "olm-paper": lambda: olm.paper(),
        # The held-out schedule (26 steps an epoch on the family).
        "olm-held-out-every-step": lambda: olm(held_out=held_out("step")),
        "olm-held-out-every-10": lambda: olm(held_out=held_out(every=10)),
        "olm-held-out-every-epoch": lambda: olm(held_out=held_out(every=26)),
        # Eq. 8 without the temperature; the optimizer path's options.
        "olm-raw-softmax": lambda: olm(
            rebalancing=parts.Rebalancing(temperature=None)
        ),
        "olm-optimizer-sgd": lambda: olm(
            coefficient_law=descent(optimizer="sgd")
        ),
        "olm-optimizer-ce-grad": lambda: olm(
            coefficient_law=descent(coefficient_ce_grad=True)
        ),
        "olm-optimizer-faithful": lambda: olm(
            coefficient_law=descent(targets="faithful")
        ),
        "closed-1": closed_form(1.0),
        "closed-0.5": closed_form(0.5),
        "closed-1-slow": closed_form(1.0, parts.Rebalancing(momentum=0.9)),
        "closed-2": closed_form(2.0),
        "closed-neg1": closed_form(-1.0),
        "closed-neg2": closed_form(-2.0),
        "closed-neg3": closed_form(-3.0),
    }


def make_balancer(method):
    """The `balancer=` argument of `method`.

    Besides the names of `methods()`, "olm-stop<p>" is the default OLM
    with a patience of p held-out measurements
    (`HeadStopping(patience=20 p)`), optionally followed by "d<x>"
    (`min_delta=x`) and "m<x>" (`momentum=x`); "heads-stop..." is the same
    without modulation (`ClosedForm(strength=0)`: every coefficient 1);
    "olm-nostop" is the default with `head_stopping=None`.
    """
    if method == "olm-nostop":
        return keras_olm.OLM(head_stopping=None)
    for prefix, strength in (("olm-stop", None), ("heads-stop", 0.0)):
        if method.startswith(prefix):
            parts = re.findall(r"([dm]?)([0-9.]+)", method[len(prefix) :])
            names = {"": "patience", "d": "min_delta", "m": "momentum"}
            kwargs = {names[k]: float(v) for k, v in parts}
            # <p> counts held-out measurements (every 20 steps here).
            kwargs["patience"] = int(kwargs["patience"]) * 20
            olm_kwargs = {
                "head_stopping": keras_olm.balancers.HeadStopping(**kwargs)
            }
            if strength is not None:
                olm_kwargs["coefficient_law"] = keras_olm.balancers.ClosedForm(
                    strength=strength
                )
            return keras_olm.OLM(**olm_kwargs)
    return methods()[method]()


def encoder(problem="", modality=""):
    if problem in EMBEDDED:
        return embedded_data.cnn_encoder(16, 3, name=f"{modality}_encoder")
    return keras.Sequential(
        [
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
        ]
    )


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


class Curves(keras.callbacks.Callback):
    """Per-epoch fused val/test accuracy, head accuracy, norms, coefs."""

    def __init__(self, validation, test):
        super().__init__()
        self.validation, self.test = validation, test
        self.rows = []

    def _logits(self, x):
        out = self.model.head_logits(x)
        return {h: keras.ops.convert_to_numpy(v) for h, v in out.items()}

    def on_epoch_end(self, epoch, logs=None):
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
        }
        balancer = self.model.balancer
        if isinstance(balancer, keras_olm.OLM):
            row["coef"] = keras.ops.convert_to_numpy(
                balancer.coefficients
            ).tolist()
            row["lambda"] = keras.ops.convert_to_numpy(
                balancer.lambdas
            ).tolist()
            stopping = balancer.head_stopping
            gates = (
                [1.0] * balancer.num_heads
                if stopping is None
                else keras.ops.convert_to_numpy(stopping.gates).tolist()
            )
            row["gate"] = gates
        self.rows.append(row)


def run(problem, method, seed, epochs):
    train, held_out, validation, test = splits(problem, seed)
    keras.utils.set_random_seed(seed)
    model = keras_olm.BalancedMultimodalModel(
        {m: encoder(problem, m) for m in train[0]},
        num_classes=int(
            max(train[1].max(), validation[1].max(), test[1].max()) + 1
        ),
        balancer=make_balancer(method),
    )
    learning_rate = EMBEDDED_LEARNING_RATE if problem in EMBEDDED else 1e-3
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    curves = Curves(validation, test)
    start = time.perf_counter()
    model.fit(
        *train,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        held_out_data=held_out if model.balancer.needs_held_out else None,
        callbacks=[curves],
        verbose=0,
    )
    return {
        "problem": problem,
        "method": method,
        "seed": seed,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
        "heads": model.head_names,
        "curves": curves.rows,
    }


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def at(record, epochs):
    """(final, best-val) fused test accuracy after `epochs` epochs."""
    rows = record["curves"][:epochs]
    best = int(np.argmax([r["val"] for r in rows]))
    return rows[-1]["test"]["fused"], rows[best]["test"]["fused"]


def fmt(values):
    values = np.asarray(values)
    return f"{values.mean():+.3f} ± {values.std():.3f}"


def report(records, epoch_counts, references=("heads", "joint")):
    """Markdown tables: accuracy, paired differences, coefficients."""
    runs = {(r["problem"], r["method"], r["seed"]): r for r in records}
    problems = [
        p for p in (*PROBLEMS, *EMBEDDED) if any(k[0] == p for k in runs)
    ]
    method_names = list(dict.fromkeys(r["method"] for r in records))
    lines = []
    for epochs in epoch_counts:
        lines += [
            f"\n### {epochs} epochs: fused test accuracy, final / at the "
            "best-validation epoch (mean ± std over seeds; n = seeds)\n",
            "| problem | method | n | final | best val | − heads final "
            "| − heads best val | − joint final | − joint best val "
            "| coefficients |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for problem in problems:
            for method in method_names:
                seeds = sorted(
                    s
                    for (p, m, s), r in runs.items()
                    if p == problem and m == method and r["epochs"] >= epochs
                )
                if not seeds:
                    continue
                acc = np.array(
                    [at(runs[problem, method, s], epochs) for s in seeds]
                )
                cells = [
                    f"{acc[:, 0].mean():.3f} ± {acc[:, 0].std():.3f}",
                    f"{acc[:, 1].mean():.3f} ± {acc[:, 1].std():.3f}",
                ]
                for ref in references:
                    paired = [
                        s
                        for s in seeds
                        if (problem, ref, s) in runs
                        and runs[problem, ref, s]["epochs"] >= epochs
                    ]
                    if method == ref or not paired:
                        cells += ["–", "–"]
                        continue
                    diff = np.array(
                        [
                            np.subtract(
                                at(runs[problem, method, s], epochs),
                                at(runs[problem, ref, s], epochs),
                            )
                            for s in paired
                        ]
                    )
                    cells += [fmt(diff[:, 0]), fmt(diff[:, 1])]
                coef = [
                    runs[problem, method, s]["curves"][epochs - 1].get("coef")
                    for s in seeds
                ]
                coef_txt = (
                    " · ".join(
                        "(" + ", ".join(f"{c:.2f}" for c in row) + ")"
                        for row in coef
                    )
                    if coef[0] is not None
                    else "–"
                )
                lines.append(
                    f"| {problem} | {method} | {len(seeds)} | "
                    + " | ".join(cells)
                    + f" | {coef_txt} |"
                )
    return "\n".join(lines)


def summary(records, method, epoch_counts):
    """One row per problem: `method`'s paired differences at every count.

    Cells are "final / best val" differences in fused test accuracy, mean
    ± std over the seeds both runs share; the last column gives the range
    of the method's coefficients over all epochs and seeds.
    """
    runs = {(r["problem"], r["method"], r["seed"]): r for r in records}
    lines = [
        "| problem | n | "
        + " | ".join(f"{e} ep: − heads | {e} ep: − joint" for e in epoch_counts)
        + " | coefficients, min-max over all epochs |",
        "|---|---|" + "---|---|" * len(epoch_counts) + "---|",
    ]
    for problem in (*PROBLEMS, *EMBEDDED):
        seeds = sorted(
            s
            for (p, m, s) in runs
            if p == problem
            and m == method
            and (p, "heads", s) in runs
            and (p, "joint", s) in runs
        )
        if not seeds:
            continue
        cells = []
        for epochs in epoch_counts:
            for ref in ("heads", "joint"):
                diff = np.array(
                    [
                        np.subtract(
                            at(runs[problem, method, s], epochs),
                            at(runs[problem, ref, s], epochs),
                        )
                        for s in seeds
                    ]
                )
                cells.append(f"{fmt(diff[:, 0])} / {fmt(diff[:, 1])}")
        coef = [
            c
            for s in seeds
            for row in runs[problem, method, s]["curves"]
            for c in row.get("coef", [])
        ]
        span = f"{min(coef):.2f}-{max(coef):.2f}" if coef else "–"
        lines.append(
            f"| {problem} | {len(seeds)} | "
            + " | ".join(cells)
            + f" | {span} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", default=["joint", "heads"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, nargs="+", default=[12, 40, 100])
    parser.add_argument("--out", default="benchmarks/results/study.jsonl")
    parser.add_argument("--report", help="only print the tables of this file")
    parser.add_argument(
        "--summary",
        help="with --report: only the paired differences of this method",
    )
    args = parser.parse_args()
    if args.report:
        records = load(args.report)
        if args.summary:
            print(summary(records, args.summary, args.epochs))
        else:
            print(report(records, args.epochs))
        return
    longest = max(args.epochs)
    done = {
        (r["problem"], r["method"], r["seed"])
        for r in load(args.out)
        if r["epochs"] >= longest
    }
    # Seed-major: an interrupted study has every problem at fewer seeds.
    for seed in range(args.seeds):
        for problem in args.problems:
            for method in args.methods:
                if (problem, method, seed) in done:
                    continue
                record = run(problem, method, seed, longest)
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    problem,
                    method,
                    seed,
                    f"{record['seconds']:.0f}s",
                    "fused",
                    [round(r["test"]["fused"], 3) for r in record["curves"]][
                        -1
                    ],
                    "coef",
                    record["curves"][-1].get("coef"),
                    "gate",
                    record["curves"][-1].get("gate"),
                    flush=True,
                )
    print(report(load(args.out), args.epochs))


if __name__ == "__main__":
    main()
