"""Bad files the readers must reject with an error naming the file.

A file that fails while a pipeline runs raises `DataError` inside it,
which TensorFlow surfaces as an `InvalidArgumentError` that carries the
`DataError` and its message.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from data_layouts import tone

from keras_olm.data import CremaD
from keras_olm.data import SunRGBD

SMALL = {"image_size": (16, 16)}


def could_not_load(path, reason):
    """The error a pipeline raises for a bad `path`, as `pytest.raises`
    arguments."""
    return tf.errors.InvalidArgumentError, (
        rf"DataError: Could not load {re.escape(str(path))}: {reason}"
    )


def clip_files(root, split="test", index=0):
    """The WAV and the frame folder of a CREMA-D clip of a split."""
    line = (root / f"{split}.csv").read_text().splitlines()[index]
    clip = line.split(",")[0]
    return root / "AudioWAV" / f"{clip}.wav", root / "Image-01-FPS" / clip


def drain(ds):
    return [y.numpy() for _, y in ds]


def test_wav_of_nan_names_the_file(cremad_root):
    wav, _ = clip_files(cremad_root, index=1)
    wave = tone(1.2)
    wave[100:200] = np.nan
    import soundfile

    soundfile.write(str(wav), wave, 22050, subtype="FLOAT")
    reader = CremaD(cremad_root, **SMALL)
    error, match = could_not_load(wav, r"audio holds NaN or inf \(100 of")
    with pytest.raises(error, match=match):
        drain(reader.as_dataset("test", batch_size=3))


def test_truncated_wav_names_the_wav_and_says_truncated(cremad_root):
    wav, _ = clip_files(cremad_root, index=0)
    data = wav.read_bytes()
    wav.write_bytes(data[: int(len(data) * 0.6)])
    reader = CremaD(cremad_root, **SMALL)
    error, match = could_not_load(wav, "truncated WAV file: its header")
    with pytest.raises(error, match=match):
        drain(reader.as_dataset("test", batch_size=3))


def test_corrupt_frame_that_is_not_sampled_names_the_frame(cremad_root):
    # Evaluation reads the centre frame of a clip (the 2nd of 2); the 1st
    # is corrupt and never sampled.
    _, frames = clip_files(cremad_root, index=2)
    bad = frames / sorted(os.listdir(frames))[0]
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg" * 4)
    reader = CremaD(cremad_root, **SMALL)
    error, match = could_not_load(bad, "corrupt or unsupported image")
    with pytest.raises(error, match=match):
        drain(reader.as_dataset("test", batch_size=3))


def test_truncated_frame_names_the_frame(cremad_root):
    _, frames = clip_files(cremad_root, index=0)
    bad = frames / sorted(os.listdir(frames))[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    reader = CremaD(cremad_root, **SMALL)
    error, match = could_not_load(bad, r".*image file is truncated")
    with pytest.raises(error, match=match):
        drain(reader.as_dataset("test", batch_size=3))


def test_skipped_corrupt_frame_is_counted_once(cremad_root):
    _, frames = clip_files(cremad_root, index=2)
    bad = frames / sorted(os.listdir(frames))[0]
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg" * 4)
    reader = CremaD(cremad_root, on_error="skip", **SMALL)
    ds = reader.as_dataset("test", batch_size=3)
    for _ in range(2):
        assert sum(len(y) for y in drain(ds)) == 2
    assert reader.skip_report("test").paths == [str(bad)]


def write_png(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path)


def depth_file(root):
    sample = (root / "test.txt").read_text().split()[0]
    folder = root / sample / "depth"
    return folder / os.listdir(folder)[0]


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((24, 32, 3), 90, np.uint8),  # 8-bit RGB
        np.full((24, 32), 90, np.uint8),  # 8-bit grey
    ],
    ids=["rgb8", "grey8"],
)
def test_8_bit_depth_png_names_the_file(sunrgbd_root, pixels):
    bad = depth_file(sunrgbd_root)
    write_png(bad, pixels)
    reader = SunRGBD(sunrgbd_root, **SMALL)
    error, match = could_not_load(bad, r"an 8-bit \w+ PNG; .*16-bit single")
    with pytest.raises(error, match=match):
        drain(reader.as_dataset("test", batch_size=4))


def test_16_bit_depth_png_still_reads(sunrgbd_root):
    reader = SunRGBD(sunrgbd_root, **SMALL)
    for x, _ in reader.as_dataset("test", batch_size=4):
        assert x["depth"].shape[1:] == (16, 16, 1)
        assert np.all(np.isfinite(x["depth"].numpy()))
