"""The floor of OLM's per-step schedule: one inference forward pass against
one training step, per backend.

OLM's `HeldOutSchedule("step")` (the authors' schedule) measures the heads'
losses on one held-out batch, the size of a training batch, at every
step: an inference forward pass more per step. Whatever the rest of OLM
costs, a step with a held-out batch costs at least a plain step plus that
pass, so `1 + forward / step` is the lowest ratio `olm_overhead.py` can
measure for the per-step schedule on that backend and model. This script
measures that ratio with Keras alone (plain joint training, no balancer):

- the step: `model.train_on_batch(x, y)`, each backend's compiled
  training step (JAX: jitted, state donated, as in `fit`);
- the forward pass: `model.predict_on_batch(x)`, the compiled inference
  forward pass of the same batch (the encoders and the fused head; the
  per-modality heads OLM also evaluates are one dense layer each).

Both return host values, so each call waits for its result. The two
alternate, `--repeats` pairs after two untimed ones (tracing), and the
table gives the median ratio of the pairs with its quartiles. Run it
once per backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/held_out_forward.py
    done
"""

import argparse
import time

import keras
import numpy as np
import olm_overhead

import keras_olm


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(args, repeats, rng):
    """`(step seconds, forward seconds)` for every timed pair."""
    x, y = olm_overhead.make_data(args, args.batch_size, rng)
    keras.utils.set_random_seed(0)
    model = keras_olm.BalancedMultimodalModel(
        olm_overhead.build_encoders(args),
        num_classes=args.classes,
        balancer=None,
    )
    model.compile(optimizer="adam")

    def step():
        model.train_on_batch(x, y)

    def forward():
        model.predict_on_batch(x)

    pairs = []
    for i in range(repeats + 2):
        pair = (timed(step), timed(forward))
        if i >= 2:
            pairs.append(pair)
    return np.array(pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="+", choices=("mlp", "resnet18"), default=None
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed pairs per model (default: 30 MLP, 8 ResNet18)",
    )
    olm_overhead.add_model_arguments(parser)
    args = parser.parse_args()
    olm_overhead.limit_threads(args.threads)
    models = args.models or ["mlp", "resnet18"]
    print(
        f"backend {keras.backend.backend()}; threads "
        f"{args.threads or 'default'}\n"
    )
    print(
        "| model | batch | step, ms | forward, ms | forward / step "
        "[quartiles] | floor of the per-step schedule |"
    )
    print("|---|---|---|---|---|---|")
    for name in models:
        args.model = name
        mlp = name == "mlp"
        args.batch_size = 128 if mlp else 32
        args.classes = 31 if mlp else 19
        repeats = args.repeats or (30 if mlp else 8)
        pairs = measure(args, repeats, np.random.default_rng(0))
        ratios = pairs[:, 1] / pairs[:, 0]
        q1, median, q3 = np.percentile(ratios, [25, 50, 75])
        print(
            f"| {olm_overhead.describe(args)} | {args.batch_size} "
            f"| {1000 * np.median(pairs[:, 0]):.1f} "
            f"| {1000 * np.median(pairs[:, 1]):.1f} "
            f"| {median:.3f} [{q1:.3f}, {q3:.3f}] | {1 + median:.2f} |"
        )


if __name__ == "__main__":
    main()
