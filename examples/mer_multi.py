"""MER-MULTI: emotion + valence from feature sequences with OLM-Trans.

The paper's MER-MULTI setting (Zong et al., IJCAI 2024, §4 and Table 3):
one transformer `SequenceEncoder` per modality over pre-extracted feature
sequences (audio, text, video and HOG), a mid-fusion block (IRFB by
default, or MBT, or a late attention / concatenation fusion), a classifier
for the 6 discrete emotions on every head and a valence regression head
(MSE) on the fused feature. The same model is trained twice with the same
seed and splits, with plain joint training and with OLM (which balances
the classification heads; the valence loss is added as it is), and every
head's weighted F1 and accuracy and the valence MSE on the test split are
printed.

Data (always read by `keras_olm.data.MerMulti`):

- default: the embedded MER sequences (`keras_olm.embedded.mer_sequences`,
  600 train / 400 test generated clips with ragged lengths, audio the
  dominant modality and text the weakest, written once into the cache in
  the MER-MULTI layout; `--modalities audio,text,video,hog` adds HOG);
- `--data-dir DIR`: a real MER-MULTI feature copy (`train.npz`/`test.npz`,
  or `<split>-label.csv` + `features/<modality>/<name>.npy`; see
  `keras_olm.data.MerMulti`), e.g. `--modalities audio,text,video`.

The reader's `held_out` split (`--held-out-fraction` of the training clips)
feeds OLM's held-out losses; the test split is scored once, at the end. Padded
timesteps are zeros (the encoders' mask value); utterance-level features
`(N, D)` are read as sequences of length 1.

Run (the default: two runs of 8 epochs with IRFB on audio + text +
video; its output and time are in `examples/README.md`; TensorFlow and JAX
spend much longer tracing and compiling these small transformers on a CPU,
so prefer torch there):

    KERAS_BACKEND=torch python examples/mer_multi.py
    python examples/mer_multi.py --fusion mbt --no-olm
    python examples/mer_multi.py --olm-only
    python examples/mer_multi.py --data-dir /data/mer2023 \\
        --modalities audio,text,video --max-len 64 --epochs 40
"""

import argparse
import json
import os
import time

import keras
import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score
from sklearn.metrics import mean_squared_error

import keras_olm
from keras_olm import layers as olm_layers
from keras_olm.data import MerMulti
from keras_olm.embedded import mer_sequences

FUSIONS = ("irfb", "mbt", "attention", "concat")
SHORT = {"audio": "A", "video": "V", "text": "T", "hog": "H"}


def load_data(args):
    """Arrays of the train, held_out and test splits, read by `MerMulti`."""
    modalities = tuple(args.modalities.split(","))
    if args.data_dir:
        root = args.data_dir
    else:
        unknown = set(modalities) - set(mer_sequences.MODALITIES)
        if unknown:
            raise SystemExit(
                f"--modalities: the embedded data has "
                f"{list(mer_sequences.MODALITIES)}; got {sorted(unknown)}."
            )
        root = mer_sequences.generate(
            num_train=args.num_train,
            num_test=args.num_test,
            seed=args.data_seed,
        )
    reader = MerMulti(
        root,
        modalities=modalities,
        target="both",
        max_len=args.max_len,
        held_out_fraction=args.held_out_fraction,
        seed=args.data_seed,
    )
    splits = {}
    for split in ("train", "held_out", "test"):
        records = reader.samples(split)
        x = {}
        for m in modalities:
            a = np.stack([r[m] for r in records]).astype("float32")
            x[m] = a[:, None, :] if a.ndim == 2 else a
        y = {
            "label": np.asarray([r["label"] for r in records], "int32"),
            "valence": np.asarray([r["valence"] for r in records], "float32"),
        }
        splits[split] = (x, y)
    return {
        "modalities": modalities,
        "root": str(root),
        "class_names": list(reader.class_names),
        **splits,
    }


def build_model(modalities, fusion, balancer, args):
    """`SequenceEncoder`s + the chosen fusion, with a valence head.

    One modality gives the unimodal baseline: its encoder, its head and
    the fused head on the same feature (late concatenation of one).
    """
    encoder_layers = 0 if fusion == "mbt" else args.layers

    def encoder(m):
        return olm_layers.SequenceEncoder(
            hidden_dim=args.hidden_dim,
            num_layers=encoder_layers,
            num_heads=args.heads,
            intermediate_dim=2 * args.hidden_dim,
            dropout=args.dropout,
            max_length=args.max_len,
            name=f"{m}_encoder",
        )

    encoders = {m: encoder(m) for m in modalities}
    if len(modalities) == 1 or fusion == "concat":
        fusion_layer = keras_olm.LateFusion("concat")
    elif fusion == "attention":
        fusion_layer = olm_layers.AttentionFusion()
    elif fusion == "irfb":
        fusion_layer = olm_layers.IRFB(
            num_bottlenecks=args.bottlenecks, num_heads=args.heads
        )
    elif fusion == "mbt":
        fusion_layer = olm_layers.MBT(
            num_layers=args.layers,
            num_heads=args.heads,
            intermediate_dim=2 * args.hidden_dim,
            num_bottlenecks=args.bottlenecks,
            dropout=args.dropout,
        )
    else:
        raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
    model = keras_olm.BalancedMultimodalModel(
        encoders,
        num_classes=6,
        fusion=fusion_layer,
        balancer=balancer,
        regression_targets={"valence": 1},
        regression_weight=args.valence_weight,
    )
    # XLA compilation of every new model costs more than it saves on
    # these small sequences (TensorFlow's "auto" would compile).
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=False
    )
    return model


def evaluate(model, x, y):
    """Weighted F1 and accuracy of every head; the valence MSE."""
    logits = model.predict_heads(x, verbose=0)
    out = {"f1": {}, "acc": {}}
    for head, z in logits.items():
        pred = np.argmax(z, axis=-1)
        out["f1"][head] = float(
            f1_score(y["label"], pred, average="weighted", zero_division=0)
        )
        out["acc"][head] = float(accuracy_score(y["label"], pred))
    n = len(y["label"])
    valence = np.concatenate(
        [
            keras.ops.convert_to_numpy(
                model({m: v[i : i + 256] for m, v in x.items()})["valence"]
            )
            for i in range(0, n, 256)
        ]
    )[:, 0]
    out["valence_mse"] = float(mean_squared_error(y["valence"], valence))
    return out


def train_and_evaluate(data, modalities, fusion, balancer, args, seed):
    """Fits one model from `seed`; returns its test scores."""
    keras.utils.set_random_seed(seed)
    model = build_model(modalities, fusion, balancer, args)
    pick = lambda x: {m: x[m] for m in modalities}  # noqa: E731
    (xt, yt), (xd, yd), (xs, ys) = data["train"], data["held_out"], data["test"]
    model.fit(
        pick(xt),
        yt,
        held_out_data=(pick(xd), yd) if model.balancer.needs_held_out else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )
    return evaluate(model, pick(xs), ys)


def format_table(runs, modalities):
    heads = list(modalities) + ["fused"]
    title = "+".join(SHORT.get(m, m) for m in modalities)
    lines = [
        "| run | "
        + " | ".join(f"{h} F1 / acc" for h in heads[:-1])
        + f" | {title} (fused) F1 / acc | valence MSE |",
        "|---" * (len(heads) + 2) + "|",
    ]
    for name, r in runs.items():
        cells = [f"{r['f1'][h]:.3f} / {r['acc'][h]:.3f}" for h in heads]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {r['valence_mse']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        help="MER-MULTI features; without it, the embedded MER sequences",
    )
    parser.add_argument(
        "--modalities",
        default="audio,text,video",
        help="comma-separated feature names",
    )
    parser.add_argument("--fusion", choices=FUSIONS, default="irfb")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument(
        "--no-olm", action="store_true", help="joint training only"
    )
    runs.add_argument("--olm-only", action="store_true", help="OLM only")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--bottlenecks", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--valence-weight",
        type=float,
        default=0.5,
        help="weight of the valence MSE in the loss",
    )
    parser.add_argument("--held-out-fraction", type=float, default=0.1)
    parser.add_argument(
        "--num-train", type=int, default=600, help="embedded: train clips"
    )
    parser.add_argument(
        "--num-test", type=int, default=400, help="embedded: test clips"
    )
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="outputs/mer_multi")
    parser.add_argument("--verbose", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the example; returns `{"runs": {name: scores}, ...}`."""
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(args)
    modalities = data["modalities"]
    sizes = {s: len(data[s][1]["label"]) for s in ("train", "held_out", "test")}
    print(
        f"MER-MULTI from {data['root']}: {sizes}, modalities "
        f"{list(modalities)}, fusion {args.fusion}, "
        f"backend {keras.backend.backend()}"
    )
    balancers = {"joint training": None, "OLM": "olm"}
    if args.no_olm:
        balancers.pop("OLM")
    if args.olm_only:
        balancers.pop("joint training")
    runs = {}
    for name, balancer in balancers.items():
        runs[name] = train_and_evaluate(
            data, modalities, args.fusion, balancer, args, args.seed
        )
    print(format_table(runs, modalities))
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.0f} s")
    os.makedirs(args.out_dir, exist_ok=True)
    result = {
        "runs": runs,
        "sizes": sizes,
        "fusion": args.fusion,
        "modalities": list(modalities),
        "seconds": elapsed,
    }
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
