"""What `import keras_olm` and an ordinary `fit` print on TensorFlow.

The script runs in a fresh process under the TensorFlow backend with
`TF_CPP_MIN_LOG_LEVEL` unset, as a user's would, next to the same `fit` of
a plain `keras.Model`: keras-olm may print nothing that TensorFlow does not
print for the plain model (its banner and, on a machine without a CUDA
driver, its `cuInit` error line are TensorFlow's own).
"""

import collections
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DATA = """
import numpy as np
import keras
rng = np.random.default_rng(0)
x = {"a": rng.random((64, 4), "float32"), "b": rng.random((64, 3), "float32")}
y = rng.integers(0, 3, 64)
"""

OLM_SCRIPT = _DATA + """
import keras_olm
encoders = {
    m: keras.Sequential([keras.layers.Dense(8, activation="relu")])
    for m in x
}
model = keras_olm.BalancedMultimodalModel(encoders, num_classes=3)
model.compile(optimizer="adam")
model.fit(x, y, epochs=2, batch_size=16, validation_data=(x, y), verbose=0)
"""

PLAIN_SCRIPT = _DATA + """
inputs = {m: keras.Input(v.shape[1:], name=m) for m, v in x.items()}
dense = [keras.layers.Dense(8, activation="relu") for _ in inputs]
features = [d(t) for d, t in zip(dense, inputs.values())]
logits = keras.layers.Dense(3)(keras.layers.Concatenate()(features))
model = keras.Model(inputs, logits)
model.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
model.fit(x, y, epochs=2, batch_size=16, validation_data=(x, y), verbose=0)
"""

# "I0000 00:00:1796673240.462688   20715 port.cc:153] text" -> "I port.cc text"
_PREFIX = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ")


def _start(script):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(process):
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return [
        _PREFIX.sub(r"\1 \2 ", line).strip()
        for line in err.splitlines()
        if line.strip()
    ]


def test_fit_prints_nothing_a_plain_keras_fit_does_not():
    olm, plain = _start(OLM_SCRIPT), _start(PLAIN_SCRIPT)
    olm_lines, plain_lines = _lines(olm), _lines(plain)
    assert not [line for line in olm_lines if "Ignoring Assert" in line]
    # Every error-level or warning line, and every banner line, comes as
    # often as with the plain model (XLA's informational lines differ with
    # what is compiled, and are left out).
    def counted(lines):
        return collections.Counter(
            line
            for line in lines
            if line[:2] in ("E ", "F ", "W ")
            or "cuInit" in line
            or "absl::InitializeLog" in line
            or "cpu_feature_guard" in line
        )

    extra = counted(olm_lines) - counted(plain_lines)
    assert not extra, (
        f"keras-olm added {dict(extra)}\n--- keras-olm:\n"
        + "\n".join(olm_lines)
        + "\n--- plain keras:\n"
        + "\n".join(plain_lines)
    )
    banner = "All log messages before absl::InitializeLog()"
    assert sum(banner in line for line in olm_lines) <= max(
        1, sum(banner in line for line in plain_lines)
    )
