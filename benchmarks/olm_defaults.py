"""Chooses OLM's defaults by measurement on the generated imbalanced problem.

Trains the same two-modality model (a fast, unreliable modality and a slow,
reliable one; `keras_olm.synthetic.make_imbalanced`) with every variant
below for several seeds and prints a markdown table of held-out accuracy
per head and the final coefficients (fast, slow, fused). The variants that
name Adam, SGD, mean-one rescaling, CE on the coefficients or targets use
`coefficient_update="optimizer"` (the default's closed form has none of
these). The family of generated problems, to 100 epochs, with paired
differences and checkpoint selection on validation, is
`benchmarks/olm_study.py`.

    KERAS_BACKEND=tensorflow python benchmarks/olm_defaults.py --epochs 12 30
"""

import argparse
import time

import keras
import numpy as np

import keras_olm
from keras_olm.synthetic import make_imbalanced

STEPS_PER_EPOCH = 29  # 1800 training samples / 64, rounded up


def variants():
    olm = keras_olm.OLM
    return {
        "concat, fused loss only (balancer=None)": lambda: None,
        "the three heads, no modulation": lambda: "heads",
        "OLM defaults": lambda: olm(),
        "OLM, closed form, strength +1 (the paper's direction)": lambda: olm(
            modulation_strength=1.0
        ),
        "OLM, Adam on L_logit (the default before issue 17)": lambda: olm(
            coefficient_update="optimizer"
        ),
        "OLM, held-out batch every step": lambda: olm(held_out_schedule="step"),
        "OLM, held-out batch every 10 steps": lambda: olm(held_out_every=10),
        "OLM, held-out batch every 20 steps": lambda: olm(held_out_every=20),
        "OLM, held-out batch once an epoch": lambda: olm(
            held_out_every=STEPS_PER_EPOCH
        ),
        "OLM, raw softmax(G/C) (no temperature)": lambda: olm(
            lambda_temperature=None
        ),
        "OLM, Adam, no mean-one rescaling": lambda: olm(
            coefficient_update="optimizer", mean_one=False
        ),
        "OLM, SGD lr 1e-3 (Algorithm 1)": lambda: olm(
            coefficient_update="optimizer", optimizer="sgd", learning_rate=1e-3
        ),
        "OLM, Adam, coefficients also follow CE": lambda: olm(
            coefficient_update="optimizer", coefficient_ce_grad=True
        ),
        "OLM, Adam, faithful targets": lambda: olm(
            coefficient_update="optimizer", targets="faithful"
        ),
        "OLM as the authors run it": lambda: olm.authors(STEPS_PER_EPOCH),
    }


def encoder():
    return keras.Sequential(
        [
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
        ]
    )


def run(make_balancer, seed, epochs):
    x, y = make_imbalanced(2000, seed=seed)
    xt, yt = make_imbalanced(2000, seed=1000 + seed)
    # Every variant trains on the same 90%; 10% is held out for OLM.
    (x, y), held_out = keras_olm.split_held_out((x, y), 0.1, seed=0)
    keras.utils.set_random_seed(seed)
    model = keras_olm.BalancedMultimodalModel(
        {"fast": encoder(), "slow": encoder()},
        num_classes=4,
        balancer=make_balancer(),
    )
    model.compile(optimizer="adam")
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=64,
        held_out_data=held_out if model.balancer.needs_held_out else None,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    logits = model.predict_heads(xt, verbose=0)
    acc = {h: float(np.mean(v.argmax(-1) == yt)) for h, v in logits.items()}
    coef = [
        float(history.history[f"{h}_coef"][-1])
        for h in model.head_names
        if f"{h}_coef" in history.history
    ]
    return acc, coef, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, nargs="+", default=[12, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="variant name prefixes")
    args = parser.parse_args()
    print(
        f"backend: {keras.backend.backend()}; problem: make_imbalanced "
        "defaults (fast right for 85% of samples, slow 0.2 per dim)"
    )
    for epochs in args.epochs:
        print(f"\n### {epochs} epochs, {args.seeds} seeds (mean ± std)\n")
        print(
            "| variant | fused acc | slow acc | fast acc "
            "| coefficients (fast, slow, fused) | s/run |"
        )
        print("|---|---|---|---|---|---|")
        for name, make in variants().items():
            if args.only and not any(name.startswith(p) for p in args.only):
                continue
            runs = [run(make, s, epochs) for s in range(args.seeds)]
            accs = {
                h: np.array([r[0][h] for r in runs])
                for h in ("fused", "slow", "fast")
            }
            coefs = np.array([r[1] for r in runs])
            coef_txt = (
                " · ".join(
                    "(" + ", ".join(f"{c:.2f}" for c in row) + ")"
                    for row in coefs
                )
                if coefs.size
                else "–"
            )
            cells = " | ".join(
                f"{accs[h].mean():.3f} ± {accs[h].std():.3f}"
                for h in ("fused", "slow", "fast")
            )
            sec = np.mean([r[2] for r in runs])
            print(f"| {name} | {cells} | {coef_txt} | {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
