"""Bad input: a clear error naming the file, or a counted, reported skip."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from data_layouts import write_wav

from keras_olm.data import CremaD
from keras_olm.data import DataError
from keras_olm.data import SunRGBD

SMALL = {"image_size": (16, 16)}
DECODE_ERRORS = (DataError, tf.errors.OpError)


def clip_files(root, split="test", index=0):
    line = (root / f"{split}.csv").read_text().splitlines()[index]
    clip = line.split(",")[0]
    return (
        root / "AudioWAV" / f"{clip}.wav",
        root / "Image-01-FPS" / clip,
        clip,
    )


def drain(ds):
    return [y.numpy() for _, y in ds]


def test_missing_root_and_split_files(tmp_path, cremad_root):
    with pytest.raises(DataError, match="nowhere"):
        CremaD(tmp_path / "nowhere")
    (cremad_root / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv"):
        CremaD(cremad_root)


def test_missing_wav_names_file_and_split_line(cremad_root):
    wav, _, _ = clip_files(cremad_root)
    wav.unlink()
    reader = CremaD(cremad_root, **SMALL)
    with pytest.raises(DataError, match=rf"{wav.name}.*test.csv:1"):
        reader.samples("test")


def test_missing_and_empty_frame_folders(cremad_root):
    _, frames, _ = clip_files(cremad_root, index=0)
    for f in os.listdir(frames):
        os.remove(frames / f)
    with pytest.raises(DataError, match=rf"{frames.name}.*no \.jpg"):
        CremaD(cremad_root).samples("test")
    os.rmdir(frames)
    with pytest.raises(DataError, match=rf"{frames.name}.*frame folder"):
        CremaD(cremad_root).samples("test")


def test_unknown_label_names_file_and_line(cremad_root):
    path = cremad_root / "test.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",XYZ"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test.csv:2: unknown label 'XYZ'"):
        CremaD(cremad_root).samples("test")


def test_empty_wav_file_names_file(cremad_root):
    wav, _, _ = clip_files(cremad_root, index=2)
    wav.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{wav.name}: empty audio file"):
        CremaD(cremad_root).samples("test")


def test_split_naming_absent_clip(cremad_root):
    with open(cremad_root / "test.csv", "a") as f:
        f.write("9999_XXX_ANG_XX,ANG\n")
    with pytest.raises(DataError, match=r"9999_XXX_ANG_XX.wav.*test.csv:4"):
        CremaD(cremad_root).samples("test")


@pytest.mark.parametrize("kind", ["corrupt_wav", "zero_length", "corrupt_jpg"])
def test_corrupt_content_error_names_file(cremad_root, kind):
    wav, frames, _ = clip_files(cremad_root, index=1)
    if kind == "corrupt_wav":
        bad = wav
        bad.write_bytes(b"RIFF....garbage, not a wave" * 8)
    elif kind == "zero_length":
        bad = wav
        write_wav(str(bad), np.zeros(0, np.float32))
    else:
        bad = frames / "00001.jpg"
        bad.write_bytes(b"\xff\xd8\xff not really a jpeg" * 4)
        for extra in os.listdir(frames):
            if extra != "00001.jpg":
                os.remove(frames / extra)
    reader = CremaD(cremad_root, **SMALL)
    with pytest.raises(DECODE_ERRORS, match=str(bad)):
        drain(reader.as_dataset("test", batch_size=2))


def test_corrupt_depth_png_names_file(sunrgbd_root):
    test = (sunrgbd_root / "test.txt").read_text().split()
    folder = sunrgbd_root / test[1] / "depth"
    bad = folder / os.listdir(folder)[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    reader = SunRGBD(sunrgbd_root, **SMALL)
    with pytest.raises(DECODE_ERRORS, match=str(bad)):
        drain(reader.as_dataset("test", batch_size=4))


def test_sunrgbd_split_naming_absent_folder(sunrgbd_root):
    with open(sunrgbd_root / "test.txt", "a") as f:
        f.write("kv2/kinect2data/does_not_exist\n")
    with pytest.raises(DataError, match=r"does_not_exist.*test.txt"):
        SunRGBD(sunrgbd_root).samples("test")


def test_skip_policy_counts_and_reports(cremad_root, caplog):
    missing, _, _ = clip_files(cremad_root, index=0)
    corrupt, _, _ = clip_files(cremad_root, index=1)
    missing.unlink()
    corrupt.write_bytes(b"not audio at all" * 8)
    kept_clip = clip_files(cremad_root, index=2)[2]
    reader = CremaD(cremad_root, on_error="skip", **SMALL)
    report = reader.skip_report("test")
    with caplog.at_level(logging.INFO, logger="keras_olm.data"):
        ds = reader.as_dataset("test", batch_size=2)
        for _ in range(2):  # Two epochs: each file is counted once.
            labels = np.concatenate(drain(ds))
    # Only the intact clip remains, with its own label.
    expected = reader.class_names.index(kept_clip.split("_")[2])
    np.testing.assert_array_equal(labels, [expected])
    assert report.count == 2
    assert sorted(report.paths) == sorted([str(missing), str(corrupt)])
    assert "2 sample(s) skipped" in report.summary()
    assert "2 sample(s) skipped" in caplog.text  # Logged at the end.
    assert str(corrupt) in caplog.text


def test_skip_policy_is_opt_in():
    with pytest.raises(ValueError, match="on_error"):
        CremaD("/tmp", on_error="ignore")


def test_skip_under_shuffling_keeps_labels(cremad_root):
    bad = []
    for index in (0, 4, 8):  # Including the last record of the split.
        wav, _, _ = clip_files(cremad_root, split="train", index=index)
        wav.write_bytes(b"corrupt" * 10)
        bad.append(str(wav))
    reader = CremaD(
        cremad_root, on_error="skip", held_out_fraction=0.0, **SMALL
    )
    expected = sorted(
        r["label"] for r in reader.samples("train") if r["audio"] not in bad
    )
    ds = reader.as_dataset("train", batch_size=None, seed=4)
    for _ in range(2):  # Two differently shuffled passes.
        assert sorted(int(y) for _, y in ds) == expected
    assert sorted(reader.skip_report("train").paths) == sorted(bad)
    strict = CremaD(cremad_root, held_out_fraction=0.0, **SMALL)
    with pytest.raises(
        DECODE_ERRORS, match=r"Could not load .*\.wav: not a readable audio"
    ):
        drain(strict.as_dataset("train", batch_size=4, seed=4))
