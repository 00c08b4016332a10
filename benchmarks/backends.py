"""The main job's cost on each backend, on this machine's CPU.

Per backend and setting, in one run: the median training step of

- `main`: the main job's model (`examples/sunrgbd_depth.py`: two
  keras-hub ResNet18 on 64x64 RGB and 64x64 depth, 19 classes, batch 32);
- `av`: the reference audio-visual model (two ResNet18 on a 257x188
  log-spectrogram and a 224x224 frame, 6 classes, batch 16: the CREMA-D
  preset's shapes),

each as plain Keras (a `keras.Model` concatenating the two encoders'
pooled features into one softmax layer) and as keras-olm
(`BalancedMultimodalModel` with the default `OLM`, a held-out batch every
20 steps), and with `--main-job SETTING ...` the wall time of
`examples/sunrgbd_depth.py` with its defaults under those settings. Every
setting runs in its own process (a backend and its flags are fixed when
the process starts); the settings:

- `tensorflow`: as installed;
- `jax`: as installed, `XLA_FLAGS` empty;
- `jax-no-algsimp`: `XLA_FLAGS=--xla_disable_hlo_passes=algsimp`, what
  the examples set on a CPU (see the README's backend section);
- `jax-old-runtime`: `XLA_FLAGS=--xla_cpu_use_thunk_runtime=false`;
- `torch`: torch's own thread count;
- `torch-1-thread`: `OMP_NUM_THREADS=1` (torch's kernels on one thread).

How a step is timed: from Keras' batch-begin callback to its batch-end
callback, after reading the loss (which waits for the step). The plain
and keras-olm models take turns, one epoch of `--steps` batches each from
the same in-memory arrays (no input pipeline), for `--turns` turns after
an untimed first turn (tracing, compiling); the first step of every epoch
is left out. The figure is the median over all timed steps, with the
quartiles. The first setting runs again at the end (`(again)` rows): the
same work, so the two rows show how far the machine drifted during the
run.

    python benchmarks/backends.py                    # all settings
    python benchmarks/backends.py --settings tensorflow jax-no-algsimp \\
        --models main --main-job tensorflow jax-no-algsimp
    python benchmarks/backends.py --convs --settings tensorflow jax \\
        jax-no-algsimp

`--convs` times each of ResNet18's convolutions at 64x64 input (batch
32) instead: the forward pass, the gradient with respect to the input and
the one with respect to the kernel, each compiled alone (`jax.jit` of
`lax.conv_general_dilated` and its `vjp`; `tf.function` of TensorFlow's
three convolution kernels), median of 5 calls.

`--cores 0` pins every process to core 0 (`taskset`), for runs that
share the machine with another job on the other core.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]

SETTINGS = {
    "tensorflow": ("tensorflow", {}),
    "jax": ("jax", {"XLA_FLAGS": ""}),
    "jax-no-algsimp": (
        "jax",
        {"XLA_FLAGS": "--xla_disable_hlo_passes=algsimp"},
    ),
    "jax-old-runtime": (
        "jax",
        {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"},
    ),
    "torch": ("torch", {}),
    "torch-1-thread": ("torch", {"OMP_NUM_THREADS": "1"}),
}

# ResNet18's convolutions at 64x64 input, batch 32: (map size, filters
# in, filters out, kernel, stride, how many in the network).
CONVS = (
    (64, 3, 64, 7, 2, 1),
    (16, 64, 64, 3, 1, 4),
    (16, 64, 128, 3, 2, 1),
    (16, 64, 128, 1, 2, 1),
    (8, 128, 128, 3, 1, 3),
    (8, 128, 256, 3, 2, 1),
    (8, 128, 256, 1, 2, 1),
    (4, 256, 256, 3, 1, 3),
    (4, 256, 512, 3, 2, 1),
    (4, 256, 512, 1, 2, 1),
    (2, 512, 512, 3, 1, 3),
)

MODELS = {
    # name: (input shapes, classes, batch size)
    "main": ({"rgb": (64, 64, 3), "depth": (64, 64, 1)}, 19, 32),
    "av": ({"audio": (257, 188, 1), "visual": (224, 224, 3)}, 6, 16),
}


def child(args):
    """Times one model's plain-Keras and keras-olm steps; prints JSON."""
    import keras
    import numpy as np

    import keras_olm

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "examples"))
    from olm_overhead import StepTimer
    from sunrgbd_depth import resnet18_encoder

    shapes, classes, batch = MODELS[args.model]
    rng = np.random.default_rng(0)

    def arrays(n):
        x = {
            m: rng.normal(size=(n,) + s).astype("float32")
            for m, s in shapes.items()
        }
        return x, rng.integers(0, classes, size=n).astype("int32")

    def encoders():
        return {
            m: resnet18_encoder(s, name=f"{m}_resnet18")
            for m, s in shapes.items()
        }

    x, y = arrays(args.steps * batch)
    held_out = arrays(4 * batch)

    keras.utils.set_random_seed(0)
    enc = encoders()
    inputs = {m: keras.Input(s, name=m) for m, s in shapes.items()}
    fused = keras.layers.Concatenate()([enc[m](inputs[m]) for m in shapes])
    plain = keras.Model(inputs, keras.layers.Dense(classes)(fused))
    plain.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    keras.utils.set_random_seed(0)
    olm = keras_olm.BalancedMultimodalModel(
        encoders(), num_classes=classes, balancer=keras_olm.OLM()
    )
    olm.compile(keras.optimizers.Adam(1e-3))

    timers = {"keras": StepTimer(), "keras-olm": StepTimer()}
    fits = {
        "keras": lambda cb: plain.fit(
            x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[cb]
        ),
        "keras-olm": lambda cb: olm.fit(
            x,
            y,
            batch_size=batch,
            epochs=1,
            verbose=0,
            held_out_data=held_out,
            callbacks=[cb],
        ),
    }
    first = {}
    for turn in range(args.turns + 1):
        order = list(fits) if turn % 2 == 0 else list(fits)[::-1]
        for api in order:
            start = time.perf_counter()
            fits[api](timers[api])
            if turn == 0:
                first[api] = time.perf_counter() - start
    for api, timer in timers.items():
        steps = np.concatenate([e[1:] for e in timer.epochs[1:]])
        q1, median, q3 = np.percentile(steps, [25, 50, 75])
        print(
            json.dumps(
                {
                    "model": args.model,
                    "api": api,
                    "median": median,
                    "q1": q1,
                    "q3": q3,
                    "steps": len(steps),
                    "first_epoch": first[api],
                }
            ),
            flush=True,
        )


def conv_child(args):
    """Times every ResNet18 convolution's forward pass and its two
    gradients (input, kernel) on the process's backend; prints JSON."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    if backend == "jax":
        import jax

        def functions(stride):
            def conv(x, w):
                return jax.lax.conv_general_dilated(
                    x,
                    w,
                    (stride, stride),
                    "SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )

            def grad_x(x, w, g):
                return jax.vjp(lambda v: conv(v, w), x)[1](g)[0]

            def grad_w(x, w, g):
                return jax.vjp(lambda v: conv(x, v), w)[1](g)[0]

            return [jax.jit(f) for f in (conv, grad_x, grad_w)]

        def run(f, *a):
            return jax.block_until_ready(f(*a))

    elif backend == "tensorflow":
        import tensorflow as tf

        def functions(stride):
            s = [1, stride, stride, 1]

            def conv(x, w):
                return tf.nn.conv2d(x, w, s, "SAME")

            def grad_x(x, w, g):
                return tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x),
                    filter=w,
                    out_backprop=g,
                    strides=s,
                    padding="SAME",
                )

            def grad_w(x, w, g):
                return tf.raw_ops.Conv2DBackpropFilter(
                    input=x,
                    filter_sizes=tf.shape(w),
                    out_backprop=g,
                    strides=s,
                    padding="SAME",
                )

            return [tf.function(f) for f in (conv, grad_x, grad_w)]

        def run(f, *a):
            return f(*a).numpy()

    else:
        raise SystemExit("--model convs runs under jax or tensorflow")

    for size, c_in, c_out, k, stride, count in CONVS:
        x = rng.normal(size=(32, size, size, c_in)).astype("float32")
        w = rng.normal(size=(k, k, c_in, c_out)).astype("float32")
        conv, grad_x, grad_w = functions(stride)
        g = np.ones_like(np.asarray(run(conv, x, w)))
        row = {"conv": f"{size}x{size}x{c_in}, {k}x{k}/{stride}, {c_out}"}
        for name, f, a in (
            ("forward", conv, (x, w)),
            ("grad input", grad_x, (x, w, g)),
            ("grad kernel", grad_w, (x, w, g)),
        ):
            run(f, *a)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                run(f, *a)
                times.append(time.perf_counter() - start)
            row[name] = float(np.median(times))
        row["count"] = count
        print(json.dumps(row), flush=True)


def run_setting(name, args, extra):
    """Runs `extra` (a child's or the example's arguments) in a process
    with `name`'s backend and environment; returns (stdout, seconds)."""
    backend, env = SETTINGS[name]
    environ = dict(os.environ, KERAS_BACKEND=backend, **env)
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    command = [sys.executable] + extra
    if args.cores:
        command = ["taskset", "-c", args.cores] + command
    start = time.perf_counter()
    done = subprocess.run(
        command, env=environ, capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(
            f"setting {name!r} ({' '.join(extra[:3])}...) failed with exit "
            f"status {done.returncode}"
        )
    return done.stdout, seconds


def run_child(name, args, model):
    """Runs this script's child for `model` (a `MODELS` name or
    `"convs"`) under setting `name`; returns the rows it printed."""
    out, _ = run_setting(
        name,
        args,
        [
            str(pathlib.Path(__file__).resolve()),
            "--child",
            "--model",
            model,
            "--steps",
            str(args.steps),
            "--turns",
            str(args.turns),
        ],
    )
    return [json.loads(line) for line in out.splitlines() if line[:1] == "{"]


def convs(args):
    """Prints the per-convolution table of `--convs`."""
    results = {name: run_child(name, args, "convs") for name in args.settings}
    parts = ("forward", "grad input", "grad kernel")
    print(
        "| convolution (map x filters, kernel/stride, filters out), "
        "count | "
        + " | ".join(
            f"{name}: {part}, ms" for name in results for part in parts
        )
        + " |"
    )
    print("|---" * (1 + len(results) * len(parts)) + "|")
    first = next(iter(results.values()))
    for i, row in enumerate(first):
        cells = [f"{row['conv']}, x{row['count']}"]
        for rows in results.values():
            cells += [f"{1000 * rows[i][p]:.1f}" for p in parts]
        print("| " + " | ".join(cells) + " |")
    cells = ["whole network (x count)"]
    for rows in results.values():
        cells += [
            f"{1000 * sum(r[p] * r['count'] for r in rows):.0f}" for p in parts
        ]
    print("| " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS)
    )
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS)
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument(
        "--main-job",
        nargs="+",
        default=[],
        choices=list(SETTINGS),
        metavar="SETTING",
        help="settings under which to time examples/sunrgbd_depth.py "
        "(its defaults)",
    )
    parser.add_argument("--cores", default="", help="taskset core list")
    parser.add_argument(
        "--convs",
        action="store_true",
        help="instead: each ResNet18 convolution (64x64 input, batch 32), "
        "forward and both gradients, per setting (jax, tensorflow)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.model == "convs":
            conv_child(args)
        else:
            child(args)
        return
    missing = [n for n in args.main_job if n not in args.settings]
    if missing:
        parser.error(f"--main-job {missing} not among --settings")
    if args.convs:
        convs(args)
        return

    settings = list(args.settings) + [args.settings[0]]
    rows, walls = [], {}
    for i, name in enumerate(settings):
        label = name if i < len(args.settings) else f"{name} (again)"
        for model in args.models:
            rows += [
                dict(row, setting=label) for row in run_child(name, args, model)
            ]
        if name in args.main_job and label == name:
            out_dir = f"outputs/backends/{name}"
            _, walls[name] = run_setting(
                name,
                args,
                ["examples/sunrgbd_depth.py", "--out-dir", out_dir],
            )
        print(f"done: {label}", file=sys.stderr, flush=True)

    print(
        f"keras {metadata.version('keras')}; {os.cpu_count()} CPUs"
        f"{', cores ' + args.cores if args.cores else ''}; "
        f"{args.turns} turns of {args.steps} steps after a first untimed "
        "turn\n"
    )
    reference = {
        (r["model"], r["api"]): r["median"]
        for r in rows
        if r["setting"] == args.settings[0]
    }
    print(
        "| setting | model | API | median step, s [quartiles] | "
        f"/ {args.settings[0]} | first epoch (tracing), s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["median"] / reference[(r["model"], r["api"])]
        print(
            f"| {r['setting']} | {r['model']} | {r['api']} | "
            f"{r['median']:.3f} [{r['q1']:.3f}, {r['q3']:.3f}] | "
            f"{ratio:.2f} | {r['first_epoch']:.1f} |"
        )
    if walls:
        base = walls[args.settings[0]]
        print(f"\n| setting | main job wall, s | / {args.settings[0]} |")
        print("|---|---|---|")
        for name, seconds in walls.items():
            print(f"| {name} | {seconds:.0f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
