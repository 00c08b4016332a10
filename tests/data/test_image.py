"""Images, frame sampling and SUN RGB-D depth decoding."""

import numpy as np
import pytest
import tensorflow as tf
from data_layouts import write_depth_png
from data_layouts import write_jpeg
from PIL import Image

from keras_olm.data import IMAGENET_MEAN
from keras_olm.data import IMAGENET_STD
from keras_olm.data import encode_sunrgbd_depth
from keras_olm.data import load_frames
from keras_olm.data import load_image
from keras_olm.data import load_sunrgbd_depth
from keras_olm.data import sample_frame_indices
from keras_olm.data.image import decode_depth_bits
from keras_olm.data.image import encode_depth_bits
from keras_olm.data.image import rotate_depth_bits


def test_load_image_normalizations(tmp_path):
    path = str(tmp_path / "a.png")
    pixels = np.random.default_rng(0).integers(0, 255, (6, 8, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    raw = load_image(tf.constant(path), size=None, normalize=None).numpy()
    np.testing.assert_array_equal(raw, pixels.astype(np.float32))
    unit = load_image(tf.constant(path), size=None, normalize="unit").numpy()
    np.testing.assert_allclose(unit, pixels / 255.0, atol=1e-6)
    net = load_image(tf.constant(path), size=(12, 16)).numpy()
    assert net.shape == (12, 16, 3)
    resized = tf.image.resize(pixels.astype(np.float32), (12, 16)).numpy()
    expected = (resized / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(net, expected, atol=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        load_image(tf.constant(path), normalize="bogus")


def test_eval_frames_are_evenly_spaced():
    idx = sample_frame_indices(tf.constant(10), 3).numpy()
    np.testing.assert_array_equal(idx, [1, 5, 8])
    np.testing.assert_array_equal(sample_frame_indices(10, 1).numpy(), [5])
    # Shorter clips repeat frames.
    np.testing.assert_array_equal(sample_frame_indices(2, 3).numpy(), [0, 1, 1])


def test_training_frames_random_but_seeded():
    a = sample_frame_indices(10, 3, training=True, seed=[1, 2]).numpy()
    b = sample_frame_indices(10, 3, training=True, seed=[1, 2]).numpy()
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 3 and list(a) == sorted(a)
    draws = {
        tuple(sample_frame_indices(10, 3, True, seed=[s, 0]).numpy())
        for s in range(20)
    }
    assert len(draws) > 5
    with pytest.raises(ValueError, match="seed"):
        sample_frame_indices(10, 3, training=True)


def test_load_frames_shapes(tmp_path):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i + 1:05d}.jpg"))
        write_jpeg(paths[-1], seed=i)
    out = load_frames(tf.constant(paths), k=3, size=(16, 16))
    assert out.shape == (3, 16, 16, 3)
    one = load_frames(tf.constant(paths), k=1, size=(16, 16))
    assert one.shape == (16, 16, 3)


def test_depth_bit_rotation_matches_toolbox():
    raw = np.array([0, 1, 8, 65535, 40000, 12345], np.uint16)
    expected = ((raw >> 3) | (raw << 13)).astype(np.uint16)
    np.testing.assert_array_equal(rotate_depth_bits(raw).numpy(), expected)
    mm = np.array([0, 1, 500, 8000, 65535], np.uint16)
    np.testing.assert_array_equal(
        rotate_depth_bits(encode_sunrgbd_depth(mm / 1000.0)).numpy(), mm
    )
    np.testing.assert_array_equal(decode_depth_bits(raw), expected)


def test_numpy_depth_bits_invert_each_other():
    # The helpers invert each other on every uint16 value.
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(
        decode_depth_bits(encode_depth_bits(every)), every
    )


def test_depth_png_round_trip(tmp_path):
    depth = np.linspace(0.0, 9.0, 24 * 32).reshape(24, 32)
    path = str(tmp_path / "d.png")
    write_depth_png(path, depth)
    stored = np.array(Image.open(path))
    assert stored.dtype == np.uint16
    metres = load_sunrgbd_depth(tf.constant(path), max_depth=None).numpy()
    assert metres.shape == (24, 32, 1)
    np.testing.assert_allclose(metres[..., 0], depth, atol=5e-4)
    clamped = load_sunrgbd_depth(tf.constant(path)).numpy()
    assert clamped.max() == pytest.approx(8.0)
    unit = load_sunrgbd_depth(tf.constant(path), normalize="max").numpy()
    np.testing.assert_allclose(unit, clamped / 8.0, atol=1e-6)
    std = load_sunrgbd_depth(
        tf.constant(path), size=(12, 16), normalize="standard"
    ).numpy()
    valid = std[std != 0]
    assert std.shape == (12, 16, 1)
    assert abs(valid.mean()) < 1e-3 and abs(valid.std() - 1) < 1e-2
