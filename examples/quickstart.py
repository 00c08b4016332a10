"""Quickstart: OLM against plain joint training on a generated problem.

Two modalities: a fast one that is right for 85% of samples and a slow,
reliable one (`keras_olm.synthetic.make_imbalanced`). Trains the same model
with plain joint training and with OLM and prints every head's held-out
accuracy. Takes about a minute on 2 CPU cores.

    KERAS_BACKEND=jax python examples/quickstart.py
"""

import argparse

import keras
import numpy as np

import keras_olm
from keras_olm.synthetic import make_imbalanced


def encoder():
    return keras.Sequential(
        [
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x, y = make_imbalanced(2000, seed=args.seed)
    x_test, y_test = make_imbalanced(2000, seed=1000 + args.seed)
    # 10% of the training data held out for OLM; both train on the rest.
    (x, y), held_out = keras_olm.split_held_out((x, y), 0.1, seed=args.seed)
    results = {}
    for name, balancer in [("plain joint training", None), ("OLM", "olm")]:
        keras.utils.set_random_seed(args.seed)
        model = keras_olm.BalancedMultimodalModel(
            {"fast": encoder(), "slow": encoder()},
            num_classes=4,
            balancer=balancer,
        )
        model.compile(optimizer="adam")
        model.fit(
            x,
            y,
            epochs=args.epochs,
            batch_size=64,
            held_out_data=held_out if balancer else None,
            verbose=0,
        )
        logits = model.predict_heads(x_test, verbose=0)
        results[name] = {
            h: float(np.mean(v.argmax(-1) == y_test)) for h, v in logits.items()
        }
    print(f"backend: {keras.backend.backend()}")
    print("| training | fast head | slow head | fused |")
    print("|---|---|---|---|")
    for name, acc in results.items():
        print(
            f"| {name} | {acc['fast']:.3f} | {acc['slow']:.3f} "
            f"| {acc['fused']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
