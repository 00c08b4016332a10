"""Smoke tests of `examples/mer_multi.py` on the current backend.

`main` runs in-process on tiny data: the embedded MER sequences (60 train
clips, one epoch, OLM with IRFB) and a MER-MULTI `.npz` copy with
utterance-level features given by `--data-dir`.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples/mer_multi.py"
TINY = [
    "--epochs=1",
    "--hidden-dim=8",
    "--heads=2",
    "--batch-size=64",  # one batch shape per split: one JAX compile
    "--verbose=0",
]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mer_multi", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_scores(result, heads):
    assert set(result["f1"]) == set(heads) == set(result["acc"])
    for metric in ("f1", "acc"):
        for value in result[metric].values():
            assert 0.0 <= value <= 1.0
    assert np.isfinite(result["valence_mse"]) and result["valence_mse"] > 0


def test_embedded_sequences_olm_irfb(example, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_OLM_CACHE", str(tmp_path / "cache"))
    out = example.main(
        TINY
        + [
            "--num-train=60",
            "--num-test=24",
            "--modalities=audio,video",
            "--fusion=irfb",
            "--olm-only",
            f"--out-dir={tmp_path / 'out'}",
        ]
    )
    assert set(out["runs"]) == {"OLM"}
    assert out["sizes"] == {"train": 54, "held_out": 6, "test": 24}
    check_scores(out["runs"]["OLM"], ("audio", "video", "fused"))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"]["OLM"]["f1"] == out["runs"]["OLM"]["f1"]


def test_data_dir_with_utterance_features(example, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        np.savez(
            tmp_path / f"{split}.npz",
            audio=rng.normal(size=(n, 6)).astype("float32"),
            text=rng.normal(size=(n, 4, 5)).astype("float32"),
            emotion=rng.integers(0, 6, n),
            valence=rng.uniform(-5, 5, n),
        )
    out = example.main(
        TINY
        + [
            f"--data-dir={tmp_path}",
            "--modalities=audio,text",
            "--max-len=4",
            "--fusion=concat",
            "--no-olm",
            f"--out-dir={tmp_path / 'out'}",
        ]
    )
    assert set(out["runs"]) == {"joint training"}
    assert out["sizes"]["test"] == 12
    check_scores(out["runs"]["joint training"], ("audio", "text", "fused"))
