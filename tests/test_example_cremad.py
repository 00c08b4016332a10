"""Smoke tests of `examples/cremad.py` on the current backend.

The example's `main` runs in-process on tiny data: the embedded
audio-visual digits (24 clips, 4 speakers, one epoch, a narrow CNN) for the
baseline and OLM runs. `--data-dir` is checked without training (the
training code is the same): the data the example builds from a tiny
CREMA-D-layout fixture, against librosa; and a wrong `--data-dir`.
"""

import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

from keras_olm.data.errors import DataError

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADS = ("audio", "visual", "fused")
TINY = [
    "--num-clips=24",
    "--num-speakers=4",
    "--epochs=1",
    "--batch-size=16",
    "--width=4",
    "--stages=2",
    "--verbose=0",
]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load("cremad", ROOT / "examples/cremad.py")


@pytest.fixture(scope="module")
def layouts():
    return _load("data_layouts", ROOT / "tests/data/data_layouts.py")


def _check_run(result, num_classes, num_test):
    for metric in ("acc", "mean_class_acc"):
        assert set(result[metric]) == set(HEADS)
        for value in result[metric].values():
            assert 0.0 <= value <= 1.0
    for head in HEADS:
        cm = result["confusion"][head]
        assert cm.shape == (num_classes, num_classes)
        assert cm.sum() == num_test
        # The printed accuracy is the confusion matrix's diagonal share.
        assert np.trace(cm) / num_test == pytest.approx(result["acc"][head])


def test_embedded_digits_baseline_and_olm(
    example, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("espeakng_loader", reason="needs espeakng-loader")
    monkeypatch.setenv("KERAS_OLM_CACHE", str(tmp_path / "cache"))
    out_dir = tmp_path / "out"
    out = example.main([*TINY, f"--out-dir={out_dir}"])
    sizes = out["sizes"]
    # Train, held_out (OLM) and val (checkpoint) partition train.csv.
    rows = {
        split: (next((tmp_path / "cache").glob("av_digits-*")) / f"{split}.csv")
        .read_text()
        .split()
        for split in ("train", "test")
    }
    assert sizes["train"] > 0 and sizes["held_out"] > 0 and sizes["val"] > 0
    assert sizes["train"] + sizes["held_out"] + sizes["val"] == len(
        rows["train"]
    )
    assert sizes["test"] == len(rows["test"])
    fit = (out_dir / "splits/train.csv").read_text().split()
    val = (out_dir / "splits/test.csv").read_text().split()
    assert not set(fit) & set(val)
    assert set(fit) | set(val) < set(rows["train"])
    assert set(out["runs"]) == {"baseline", "heads", "olm"}
    for result in out["runs"].values():
        _check_run(result, 10, sizes["test"])
    printed = capsys.readouterr().out
    assert "inputs: {'audio': (64, 94, 1), 'visual': (32, 32, 3)}" in printed
    table = out["table"].splitlines()
    assert table[0] == "| run | Audio | Visual | AV (fused) |"
    assert len(table) == 5
    for line, name in zip(table[2:], ("baseline", "heads", "olm")):
        acc = out["runs"][name]["acc"]
        cells = " | ".join(f"{acc[h]:.3f}" for h in HEADS)
        assert line.endswith(f"| {cells} |")
        assert line in printed
    for name in (
        "confusion_matrices.png",
        "logit_norms_comparison.png",
        "baseline/logit_norms.png",
        "olm/logit_norms.png",
        "olm/coefficients.png",
    ):
        path = out_dir / name
        assert path.read_bytes()[:4] == b"\x89PNG", name
    saved = json.loads((out_dir / "results.json").read_text())
    assert set(saved["runs"]) == {"baseline", "heads", "olm"}
    assert saved["runs"]["olm"]["acc"] == out["runs"]["olm"]["acc"]


def _write_cremad(root, layouts):
    """18 clips in CREMA-D's layout: 16 kHz WAVs of 1.2345 s, 2 frames.

    At 1.2345 s, 16 kHz -> 22,050 Hz is not a whole number of samples
    (27,220.7): the resampled length must be librosa's (rounded up).
    """
    labels = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    rows = []
    for i in range(18):
        clip = f"10{i:02d}_IEO_{labels[i % 6]}_HI"
        layouts.write_wav(
            str(root / "AudioWAV" / f"{clip}.wav"),
            layouts.tone(1.2345, sr=16000, freq=200 + 150 * (i % 6), seed=i),
            sr=16000,
        )
        layouts.write_frames(str(root / "Image-01-FPS" / clip), n=2, seed=i)
        rows.append(f"{clip},{labels[i % 6]}\n")
    (root / "train.csv").write_text("".join(rows[:12]))
    (root / "test.csv").write_text("".join(rows[12:]))
    return root


def test_data_dir_reads_cremad_layout(example, layouts, tmp_path):
    """`--data-dir`: CREMA-D's layout, labels, splits and 257 x 188 audio.

    The spectrograms equal OGM-GE's librosa code (`librosa.load(sr=22050)`,
    tile to 3 s, `log(|librosa.stft(512, 353)| + 1e-7)`) on the bins below
    7.2 kHz (the 16 kHz clips have nothing above 8 kHz, where both sit at
    float32 rounding).
    """
    librosa = pytest.importorskip("librosa")
    root = _write_cremad(tmp_path / "CREMA-D", layouts)
    out_dir = tmp_path / "out"
    args = example.parse_args(
        [
            f"--data-dir={root}",
            "--image-size=32",
            "--val-fraction=0.2",
            "--batch-size=4",
            f"--out-dir={out_dir}",
        ]
    )
    data = example.load_data(args)
    assert data["source"] == f"CREMA-D at {root}"
    assert data["class_names"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert data["input_shapes"] == {
        "audio": (257, 188, 1),
        "visual": (32, 32, 3),
    }
    # held_out: round(12 * 0.1) = 1 clip; val: round(11 * 0.2) = 2 clips.
    assert data["sizes"] == {"train": 9, "held_out": 1, "val": 2, "test": 6}
    counts = {
        name: sum(len(y) for _, y in data[name].as_numpy_iterator())
        for name in ("train", "held_out", "val", "test")
    }
    assert counts == data["sizes"]
    fit, val = (
        (out_dir / "splits" / f"{name}.csv").read_text().split()
        for name in ("train", "test")
    )
    held_out = [
        f"{r['id']},{r['id'].split('_')[2]}"
        for r in data["reader"].samples("held_out")
    ]
    train_rows = (root / "train.csv").read_text().split()
    assert sorted(fit + val + held_out) == sorted(train_rows)
    records = data["reader"].samples("test")
    batches = list(data["test"].as_numpy_iterator())
    labels = np.concatenate([y for _, y in batches])
    assert (
        labels.tolist() == [r["label"] for r in records] == [0, 1, 2, 3, 4, 5]
    )
    specs = np.concatenate([x["audio"][..., 0] for x, _ in batches])
    band = np.arange(257) * 22050 / 512 < 7200
    for record, spec in zip(records, specs):
        wave, _ = librosa.load(record["audio"], sr=22050)
        assert len(wave) == 27221  # ceil(19752 * 22050 / 16000)
        wave = np.tile(wave, 3)[:66150]
        stft = librosa.stft(wave, n_fft=512, hop_length=353)
        ref = np.log(np.abs(stft) + 1e-7)
        np.testing.assert_allclose(spec[band], ref[band], atol=5e-3)


def test_wrong_data_dir_names_it(example, tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError, match=str(missing)):
        example.main([f"--data-dir={missing}", f"--out-dir={tmp_path}"])
    # A folder that is not CREMA-D: the missing part is named.
    os.makedirs(tmp_path / "not_cremad" / "AudioWAV")
    with pytest.raises(DataError, match="CREMA-D frame folder"):
        example.main(
            [f"--data-dir={tmp_path / 'not_cremad'}", f"--out-dir={tmp_path}"]
        )
