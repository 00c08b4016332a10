"""The README's quick start runs as pasted (fewer epochs and seeds)."""

import os
import sys

import keras

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
)
import quickstart  # noqa: E402  (benchmarks/quickstart.py)

#: The only edits: 2 epochs instead of 10, one seed instead of three.
SHORTER = [("epochs=10,", "epochs=2,"), ("seeds=(0, 1, 2),", "seeds=(0,),")]


def test_the_quick_start_runs(tmp_path):
    code = quickstart.quickstart_code()
    for old, new in SHORTER:
        assert code.count(old) >= 1, f"the quick start no longer has {old}"
        code = code.replace(old, new)
    _, out = quickstart.run(code, keras.backend.backend(), str(tmp_path))
    lines = out.splitlines()
    for head in ("fast", "slow", "fused"):
        assert any(line.startswith(f"{head} accuracy ") for line in lines)
    assert "vs_joint" in out  # the comparison table
    written = set(os.listdir(tmp_path / "olm_run"))
    assert {"olm_diagnostics.csv", "logit_norms.png"} <= written
    assert "coefficients.png" in written  # OLM by default: coefficients
    assert (tmp_path / "balancers.png").stat().st_size > 1000
