"""`benchmarks/compare.py`: a tiny grid runs and reports finite numbers."""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
)
import compare  # noqa: E402  (benchmarks/compare.py)

# Generated once into the cache: 40 clips (30 train, 10 test) and 3 rooms
# per class; a 1-block CNN of width 2, one epoch.
TINY = [
    "--quick",
    "--digits-clips",
    "40",
    "--rooms-per-class",
    "3",
    "--width",
    "2",
    "--stages",
    "1",
    "--epochs",
    "1",
    "--jit-compile",
    "false",  # a step or two per run: compiling would cost more
    "--quiet",
]


def _cells(table):
    lines = table.split("\n\n")[0].splitlines()
    return {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in lines[2:]
    }


def test_quick_grid_reports_every_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Benchmarks\n\n## `compare.py`: old\n\nstale\n\n## other\n\nkept\n"
    )
    store = tmp_path / "results.json"
    argv = TINY + [
        "--datasets",
        "digits",
        "--rows",
        "unimodal,ensemble,olm",
        "--plot",
        str(tmp_path / "compare.png"),
        "--write-readme",
        "--readme",
        str(readme),
        "--resume",
        str(store),
    ]
    results, table = compare.main(argv)
    cells = _cells(table)
    assert list(cells) == [
        "audio only",
        "visual only",
        "Ensemble of unimodal models",
        "Concat + OLM",
    ]
    for row, values in cells.items():
        # acc, mAP, macro F1 in [0, 1]; seconds per epoch > 0.
        numbers = [float(v) for v in values]
        assert all(math.isfinite(v) for v in numbers), row
        assert all(0.0 <= v <= 1.0 for v in numbers[:3]), row
        assert numbers[3] > 0.0, row
    # The ensemble averages the two unimodal models' probabilities.
    runs = json.loads(store.read_text())["datasets"]["digits"]["runs"]
    probs = np.mean(
        [np.asarray(runs[f"only:{i}"]["0"]["probs"]) for i in (0, 1)], axis=0
    )
    test_y = compare.make_splits(compare.load_dataset("digits", 40))["test"][1]
    ensemble = results["digits"]["Ensemble of unimodal models"][0]
    assert ensemble["acc"] == pytest.approx(np.mean(probs.argmax(-1) == test_y))
    assert (tmp_path / "compare.png").stat().st_size > 1000
    text = readme.read_text()
    assert "stale" not in text and "## other\n\nkept" in text
    assert "| Concat + OLM |" in text

    # --resume: every run is in the file, nothing is trained again.
    def fail(*args, **kwargs):
        raise AssertionError("trained a run that --resume already holds")

    original = compare.train_one
    compare.train_one = fail
    try:
        _, again = compare.main(argv)
    finally:
        compare.train_one = original
    assert again == table


def test_rooms_load_and_split_without_overlap():
    data = compare.load_dataset("rooms", 3)
    assert data["modalities"] == ["rgb", "depth"]
    assert data["num_classes"] == 19
    splits = compare.make_splits(data)
    n_train = len(data["train"][1])
    sizes = {k: len(splits[k][1]) for k in ("pool", "held_out", "val")}
    assert sum(sizes.values()) == n_train
    assert sizes["held_out"] == round(0.1 * (n_train - sizes["val"]))
    pool = splits["pool"][0]["rgb"].reshape(sizes["pool"], -1)
    # No validation or held-out image is also a training image.
    for other in ("val", "held_out"):
        images = splits[other][0]["rgb"].reshape(sizes[other], -1)
        assert not any((pool == v).all(axis=1).any() for v in images)
    assert splits["test"][0]["depth"].shape[1:] == (32, 32, 1)


def test_paired_differences_pair_seed_by_seed():
    def runs(*pairs):
        return [{"seed": s, "acc": a} for s, a in pairs]

    results = {
        "rooms": {
            "modalities": ["rgb", "depth"],
            "Concat": runs((0, 0.80), (1, 0.70), (2, 0.90)),
            "Concat + heads (no modulation)": runs((0, 0.82), (2, 0.86)),
            "Concat + OLM": runs((2, 0.91), (0, 0.84), (1, 0.75)),
            "Concat + PMR": "failed: ValueError: no",
        }
    }
    cells = _cells(compare.format_paired(results))
    # OLM - Concat: +0.04, +0.05, +0.01; OLM - heads: seeds 0 and 2 only.
    assert cells["Concat + OLM"] == [
        "+0.033 ± 0.017 (n=3)",
        "+0.035 ± 0.015 (n=2)",
    ]
    assert cells["Concat + heads (no modulation)"] == [
        "-0.010 ± 0.030 (n=2)",  # +0.02, -0.04
        "–",
    ]
    assert cells["Concat + PMR"] == ["–", "–"]


def test_unknown_rows_and_changed_settings_are_errors(tmp_path):
    with pytest.raises(SystemExit):
        compare.parse_args(["--rows", "concat,bogus"])
    store = tmp_path / "r.json"
    store.write_text(
        json.dumps(
            {"settings": {"epochs": 99}, "wall_seconds": 0, "datasets": {}}
        )
    )
    with pytest.raises(ValueError, match="--resume"):
        compare.main(TINY + ["--resume", str(store), "--plot", ""])
