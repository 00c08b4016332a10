"""Smoke tests of `examples/sunrgbd_depth.py` on the current backend.

The example's `main` runs in-process on tiny data: the embedded RGB-D rooms
(3 samples per class at 32x32, one epoch, a narrow ResNet18) for the
baseline and OLM runs, and generated feature arrays for `--features`.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("keras_hub")

EXAMPLE = (
    pathlib.Path(__file__).resolve().parents[1] / "examples/sunrgbd_depth.py"
)
HEADS = ("rgb", "depth", "fused")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("sunrgbd_depth", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_accuracies(result):
    for metric in ("acc", "mean_class_acc"):
        assert set(result[metric]) == set(HEADS)
        for value in result[metric].values():
            assert 0.0 <= value <= 1.0


def test_embedded_rooms_baseline_and_olm(example, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_OLM_CACHE", str(tmp_path / "cache"))
    out_dir = tmp_path / "out"
    out = example.main(
        [
            "--samples-per-class=3",
            "--image-size=32",
            "--width=0.25",
            "--blocks=1",
            "--epochs=1",
            "--batch-size=16",
            f"--out-dir={out_dir}",
            "--verbose=0",
        ]
    )
    assert set(out["runs"]) == {"baseline", "heads", "olm"}
    for result in out["runs"].values():
        _check_accuracies(result)
        for head in HEADS:
            cm = result["confusion"][head]
            assert cm.shape == (19, 19)
            assert cm.sum() == out["sizes"]["test"]
    # Train, held_out (OLM) and val (checkpoint) partition the training split.
    sizes = out["sizes"]
    assert sizes["train"] > 0 and sizes["held_out"] > 0 and sizes["val"] > 0
    assert sizes["train"] + sizes["held_out"] + sizes["val"] == 19 * 3 - 38
    lines = out["table"].splitlines()
    assert lines[0] == "| run | RGB | Depth | RGB-D (fused) |"
    assert lines[2].startswith("| joint training (no OLM) |")
    assert lines[3].startswith("| heads, no modulation |")
    assert lines[4].startswith("| OLM |")
    for name in (
        "confusion_matrices.png",
        "logit_norms_comparison.png",
        "baseline/logit_norms.png",
        "heads/logit_norms.png",
        "olm/logit_norms.png",
        "olm/coefficients.png",
        "olm/olm_diagnostics.csv",
    ):
        path = out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    png = (out_dir / "confusion_matrices.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    saved = json.loads((out_dir / "results.json").read_text())
    assert set(saved["runs"]) == {"baseline", "heads", "olm"}
    # One seed: one paired difference per reference, OLM minus it.
    acc = {n: r["acc"]["fused"] for n, r in out["runs"].items()}
    assert out["paired"]["heads"] == pytest.approx([acc["olm"] - acc["heads"]])
    assert out["paired"]["baseline"] == pytest.approx(
        [acc["olm"] - acc["baseline"]]
    )
    assert saved["paired_fused_acc"] == out["paired"]


def write_features(path):
    """Pre-extracted RGB and depth features of 19 classes, `--features`."""
    rng = np.random.default_rng(0)
    centres = {m: rng.normal(size=(19, 8)) for m in ("rgb", "depth")}
    for split, n in (("train", 95), ("test", 38)):
        label = np.arange(n) % 19
        arrays = {
            m: (c[label] + rng.normal(size=(n, 8))).astype(np.float32)
            for m, c in centres.items()
        }
        np.savez(path / f"{split}.npz", label=label, **arrays)


def test_features_two_seeds_paired(example, tmp_path, capsys):
    write_features(tmp_path)
    out = example.main(
        [
            f"--features={tmp_path}",
            "--seeds",
            "3",
            "4",
            "--epochs=2",
            f"--out-dir={tmp_path / 'out'}",
            "--verbose=0",
        ]
    )
    seeds = out["seeds"]
    assert set(seeds) == {"baseline", "heads", "olm"}
    assert all(len(r) == 2 for r in seeds.values())
    for name in ("heads", "baseline"):
        expected = [
            o["acc"]["fused"] - r["acc"]["fused"]
            for o, r in zip(seeds["olm"], seeds[name])
        ]
        assert out["paired"][name] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert "| run (2 seeds) |" in printed
    assert "OLM minus the reference (seeds [3, 4])" in printed
    assert (tmp_path / "out/olm/seed4/logit_norms.png").is_file()


def test_features_baseline_only(example, tmp_path, capsys):
    write_features(tmp_path)
    out_dir = tmp_path / "out"
    out = example.main(
        [
            f"--features={tmp_path}",
            "--no-olm",
            "--epochs=2",
            f"--out-dir={out_dir}",
            "--verbose=0",
        ]
    )
    assert set(out["runs"]) == {"baseline"}
    _check_accuracies(out["runs"]["baseline"])
    printed = capsys.readouterr().out
    assert "| joint training (no OLM) |" in printed
    assert "| OLM |" not in printed
    assert (out_dir / "confusion_matrices.png").is_file()
    assert (out_dir / "baseline/logit_norms.png").is_file()
    # The "Figures" line names every PNG written, and nothing else.
    (line,) = [x for x in printed.splitlines() if x.startswith("Figures")]
    listed = sorted(line.split(": ", 1)[1].split(", "))
    assert listed == sorted(str(p) for p in out_dir.rglob("*.png"))
    assert len(listed) == 4 == len(out["written_figures"])


def test_data_dir_reads_allsplit_mat(example, tmp_path):
    """`--data-dir`: a SUN RGB-D copy with the toolbox's `allsplit.mat`."""
    from scipy import io as sio

    from keras_olm.embedded import rgbd_rooms

    root = rgbd_rooms.generate(
        tmp_path / "SUNRGBD", samples_per_class=2, image_size=32, verbose=False
    )
    splits = {}
    for split in ("train", "test"):
        splits[split] = (root / f"{split}.txt").read_text().split()
        (root / f"{split}.txt").unlink()
    prefix = "/n/fs/sun3d/data/SUNRGBD/"  # absolute, as in the toolbox
    sio.savemat(
        root / "allsplit.mat",
        {
            f"all{split}": np.array([prefix + p for p in paths], dtype=object)
            for split, paths in splits.items()
        },
    )
    out_dir = tmp_path / "out"
    args = example.parse_args(
        [
            f"--data-dir={root}",
            "--image-size=32",
            "--batch-size=4",
            f"--out-dir={out_dir}",
        ]
    )
    data = example.load_data(args)
    fit, val = (
        set((out_dir / "splits" / f"{name}.txt").read_text().split())
        for name in ("fit", "val")
    )
    held_out = {r["id"] for r in data["reader"].samples("held_out")}
    assert not (fit & val or fit & held_out or val & held_out)
    assert fit | val | held_out == set(splits["train"])
    assert data["kind"] == "images"
    assert data["input_shapes"] == {"rgb": (32, 32, 3), "depth": (32, 32, 1)}
    sizes = data["sizes"]
    assert sizes["train"] + sizes["held_out"] + sizes["val"] == len(
        splits["train"]
    )
    assert sizes["test"] == len(splits["test"])
    counts = {
        name: sum(len(y) for _, y in data[name].as_numpy_iterator())
        for name in ("train", "held_out", "val", "test")
    }
    assert counts == sizes
    x, y = next(iter(data["train"]))
    assert tuple(x["depth"].shape) == (4, 32, 32, 1)
    assert 0 <= int(np.min(y)) and int(np.max(y)) < 19


@pytest.fixture(scope="module")
def common():
    path = EXAMPLE.parent / "_common.py"
    spec = importlib.util.spec_from_file_location("examples_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_settings_only_jax_on_cpu_and_never_over_the_user(common):
    flags = {"XLA_FLAGS": "--xla_disable_hlo_passes=algsimp"}
    assert common.cpu_settings("jax", {}, accelerator=False) == flags
    assert common.cpu_settings("jax", {"JAX_PLATFORMS": "cpu"}, False) == flags
    # The user's own flags, even empty ones, are kept as they are.
    assert common.cpu_settings("jax", {"XLA_FLAGS": ""}, False) == {}
    assert common.cpu_settings("jax", {"XLA_FLAGS": "--x=1"}, False) == {}
    # A GPU or TPU may run the model: XLA's passes are left alone.
    assert common.cpu_settings("jax", {}, accelerator=True) == {}
    assert common.cpu_settings("jax", {"JAX_PLATFORMS": "cuda"}, False) == {}
    for backend in ("tensorflow", "torch"):
        assert common.cpu_settings(backend, {}, accelerator=False) == {}


def test_apply_cpu_settings_sets_the_environment(common, monkeypatch, capsys):
    import keras

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda _: None)
    added = common.apply_cpu_settings()
    if keras.backend.backend() == "jax":
        assert added == {"XLA_FLAGS": common.JAX_CPU_XLA_FLAGS}
        assert common.os.environ["XLA_FLAGS"] == common.JAX_CPU_XLA_FLAGS
        assert "CPU setting: XLA_FLAGS=" in capsys.readouterr().out
    else:
        assert added == {}
        assert "XLA_FLAGS" not in common.os.environ


_SWAP_PROBE = """
import jax, jax.numpy as jnp
x = jnp.zeros((2, 2, 2, 8)); w = jnp.zeros((3, 3, 8, 8))
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(x, w).compile().as_text()
line = next(l for l in hlo.splitlines() if " convolution(" in l)
print("SWAPPED" if "rhs_reversal" in line else "KEPT")
"""


@pytest.mark.parametrize("flags, expected", [("", "SWAPPED"), (None, "KEPT")])
def test_jax_cpu_flag_keeps_small_map_convolutions_unswapped(
    common, flags, expected
):
    """XLA swaps a 3x3 convolution's operands on a 2x2 map (the slow
    path the examples' flag avoids); with the flag it compiles as
    written."""
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = common.JAX_CPU_XLA_FLAGS if flags is None else flags
    out = subprocess.run(
        [sys.executable, "-c", _SWAP_PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected


def test_confusion_tick_labels_stay_readable_with_19_classes(
    common, tmp_path, monkeypatch
):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    names = [f"room type {i:02d}" for i in range(19)]
    rng = np.random.default_rng(0)
    result = {
        "confusion": {h: rng.integers(0, 9, (19, 19)) for h in ("a", "fused")},
        "acc": {"a": 0.5, "fused": 0.6},
    }
    path = common.plot_confusion_grid(
        {"baseline": result, "olm": result},
        ["a", "fused"],
        names,
        str(tmp_path / "cm.png"),
        {"fused": "A+B"},
    )
    assert pathlib.Path(path).is_file()
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:4]:
        labels = ax.get_xticklabels() + ax.get_yticklabels()
        assert [t.get_text() for t in ax.get_yticklabels()] == names
        assert min(t.get_fontsize() for t in labels) >= 7
        # Neighbouring y labels do not overlap.
        boxes = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
        for upper, lower in zip(boxes, boxes[1:]):
            assert not upper.overlaps(lower)
