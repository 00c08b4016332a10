"""Each reader on a tiny fixture in its real layout."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_olm.data import AVE
from keras_olm.data import CREMAD_CLASSES
from keras_olm.data import SUNRGBD_CLASSES
from keras_olm.data import CremaD
from keras_olm.data import DataError
from keras_olm.data import KineticsSounds
from keras_olm.data import MerMulti
from keras_olm.data import SunRGBD
from keras_olm.data import SunRGBDFeatures
from keras_olm.data import VGGSound
from keras_olm.data import audio_to_spectrogram
from keras_olm.data import read_split_file

SMALL = {"image_size": (16, 16)}


def collect(ds):
    """All (inputs, labels) of a batched dataset, concatenated."""
    xs, ys = [], []
    for x, y in ds:
        xs.append({k: v.numpy() for k, v in x.items()})
        ys.append(y)
    inputs = {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    return inputs, ys


def ids(reader, split):
    return [r["id"] for r in reader.samples(split)]


def test_cremad(cremad_root):
    reader = CremaD(cremad_root, held_out_fraction=0.25, **SMALL)
    assert (
        reader.class_names
        == CREMAD_CLASSES
        == tuple("NEU HAP SAD FEA DIS ANG".split())
    )
    train, held_out, test = (
        ids(reader, "train"),
        ids(reader, "held_out"),
        ids(reader, "test"),
    )
    assert (
        len(train) + len(held_out) == 9
        and len(held_out) == 2
        and len(test) == 3
    )
    assert not set(train) & set(held_out)
    # The hold-out is deterministic given the seed.
    again = CremaD(cremad_root, held_out_fraction=0.25, **SMALL)
    assert ids(again, "held_out") == held_out
    inputs, ys = collect(reader.as_dataset("test", batch_size=2))
    assert inputs["audio"].shape == (3, 257, 188, 1)
    assert inputs["visual"].shape == (3, 16, 16, 3)
    # Batched spectrograms equal the one-clip pipeline's.
    first = reader.samples("test")[0]["audio"]
    np.testing.assert_allclose(
        inputs["audio"][0],
        audio_to_spectrogram(tf.constant(first), "cremad").numpy(),
        atol=1e-4,
    )
    labels = np.concatenate([y.numpy() for y in ys])
    expected = [CREMAD_CLASSES.index(c.split("_")[2]) for c in test]
    np.testing.assert_array_equal(labels, expected)
    # Shuffling is seeded, and labels stay paired with their clips.
    by_audio = {
        float(x["audio"].numpy().sum()): int(y)
        for x, y in reader.as_dataset("train", batch_size=None, shuffle=False)
    }

    def order(seed):
        ds = reader.as_dataset("train", batch_size=None, seed=seed)
        pairs = [(float(x["audio"].numpy().sum()), int(y)) for x, y in ds]
        assert all(by_audio[a] == y for a, y in pairs)
        return [a for a, _ in pairs]

    first = order(5)
    assert first == order(5) and sorted(first) == sorted(by_audio)


def test_kinetics_sounds(ks_root):
    reader = KineticsSounds(ks_root, held_out_fraction=0.25, **SMALL)
    assert reader.class_names == ("dog barking", "playing bagpipes", "singing")
    assert len(reader.samples("held_out")) == 1
    assert not set(ids(reader, "train")) & set(ids(reader, "held_out"))
    inputs, _ = collect(reader.as_dataset("test", batch_size=2))
    assert inputs["audio"].shape == (2, 257, 1004, 1)
    assert inputs["visual"].shape == (2, 3, 16, 16, 3)
    assert reader.samples("test")[0]["audio"].endswith(
        os.path.join("audio_test", "tst0_0_10.wav")
    )


def test_vggsound(vggsound_root):
    reader = VGGSound(vggsound_root, held_out_fraction=0.34, **SMALL)
    assert reader.class_names == ("cat meowing", "dog barking")
    assert ids(reader, "test") == ["jkl_000005", "mno_000007"]
    assert sorted(ids(reader, "train") + ids(reader, "held_out")) == [
        "abc_000030",
        "def_000000",
        "ghi_000012",
    ]
    inputs, ys = collect(reader.as_dataset("train", batch_size=4, seed=1))
    assert inputs["audio"].shape == (2, 129, 626, 1)
    assert inputs["visual"].shape == (2, 3, 16, 16, 3)


def test_ave_keeps_per_second_labels(ave_root):
    reader = AVE(ave_root, localization=True, **SMALL)
    assert reader.class_names == ("Church bell", "Dog", "Violin")
    assert reader.splits == ("train", "val", "test", "held_out")
    assert ids(reader, "val") == ["va0"]
    test = reader.samples("test")
    background = reader.num_classes
    assert test[0]["segments"] == [background] + [2, 2] + [background] * 7
    assert test[1]["segments"] == [background] * 6 + [0] * 4
    inputs, ys = collect(reader.as_dataset("test", batch_size=2))
    assert inputs["audio"].shape == (2, 257, 1004, 1)
    assert inputs["visual"].shape == (2, 3, 16, 16, 3)
    np.testing.assert_array_equal(ys[0]["label"].numpy(), [2, 0])
    np.testing.assert_array_equal(
        ys[0]["segments"].numpy(), [test[0]["segments"], test[1]["segments"]]
    )
    plain = AVE(ave_root, **SMALL)
    _, ys = collect(plain.as_dataset("val", batch_size=1))
    assert int(ys[0][0]) == 1


def test_sunrgbd_text_split(sunrgbd_root, caplog):
    reader = SunRGBD(sunrgbd_root, held_out_fraction=0.3, **SMALL)
    assert reader.class_names == SUNRGBD_CLASSES and reader.num_classes == 19
    train, held_out, test = (
        ids(reader, "train"),
        ids(reader, "held_out"),
        ids(reader, "test"),
    )
    # 8 listed train samples, one ("gym") outside the 19 classes: dropped.
    assert (
        len(train) + len(held_out) == 7
        and len(held_out) == 2
        and len(test) == 3
    )
    assert not set(train) & set(held_out)
    assert "xtion/sun3ddata/mit_2/0003" not in train + held_out
    assert reader.dropped_scenes == {"train": 1, "test": 0}
    with pytest.raises(DataError, match=r"0003/scene.txt: unknown label 'gym'"):
        SunRGBD(sunrgbd_root, unknown_scene="error").samples("train")
    inputs, ys = collect(reader.as_dataset("test", batch_size=8))
    assert inputs["rgb"].shape == (3, 16, 16, 3)
    assert inputs["depth"].shape == (3, 16, 16, 1)
    assert 0.0 <= inputs["depth"].min() and inputs["depth"].max() <= 1.0
    expected = [
        SUNRGBD_CLASSES.index(
            (sunrgbd_root / i / "scene.txt").read_text().strip()
        )
        for i in test
    ]
    np.testing.assert_array_equal(ys[0].numpy(), expected)


def test_sunrgbd_depth_options(sunrgbd_root):
    metres = SunRGBD(sunrgbd_root, depth_normalize=None, image_size=(24, 32))
    bfx = SunRGBD(
        sunrgbd_root,
        depth_normalize=None,
        use_bfx=True,
        depth_channels=3,
        image_size=(24, 32),
    )
    a, _ = collect(metres.as_dataset("test", batch_size=8))
    b, _ = collect(bfx.as_dataset("test", batch_size=8))
    assert b["depth"].shape == (3, 24, 32, 3)
    # Sample index 2 was written with 0.5 + 0.25 * 2 = 1.0 m, bfx + 1 m.
    assert a["depth"][0, 5, 5, 0] == pytest.approx(1.0, abs=1e-3)
    assert a["depth"][0, 0, 0, 0] == 0.0  # The hole.
    assert b["depth"][0, 5, 5, 1] == pytest.approx(2.0, abs=1e-3)


def test_readers_take_an_int_image_size(sunrgbd_root, cremad_root):
    x, _ = collect(SunRGBD(sunrgbd_root, image_size=20).as_dataset("test", 8))
    assert x["rgb"].shape[1:] == (20, 20, 3)
    assert x["depth"].shape[1:] == (20, 20, 1)
    assert CremaD(cremad_root, image_size=12).image_size == (12, 12)
    for bad in (0, (16,), (16, 16, 3), 16.0, "16", (True, 16)):
        with pytest.raises(ValueError, match="image_size"):
            SunRGBD(sunrgbd_root, image_size=bad)


def test_sunrgbd_allsplit_mat(sunrgbd_root, tmp_path):
    from scipy import io as sio

    train = (sunrgbd_root / "train.txt").read_text().split()
    test = (sunrgbd_root / "test.txt").read_text().split()
    prefix = "/n/fs/sun3d/data/SUNRGBD/"
    mat = tmp_path / "allsplit.mat"
    sio.savemat(
        mat,
        {
            "alltrain": np.array([prefix + p for p in train], dtype=object),
            "alltest": np.array([prefix + p + "/" for p in test], dtype=object),
        },
    )
    assert read_split_file(str(mat)) == {"train": train, "test": test}
    reader = SunRGBD(sunrgbd_root, split_file=mat, **SMALL)
    assert ids(reader, "test") == test
    assert len(reader.samples("train")) + len(reader.samples("held_out")) == 7


def test_sunrgbd_features(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "train.npz",
        rgb=rng.normal(size=(10, 8)),
        depth=rng.normal(size=(10, 8)),
        label=np.arange(10) % 19,
    )
    np.save(tmp_path / "test_rgb.npy", rng.normal(size=(4, 8)))
    np.save(tmp_path / "test_depth.npy", rng.normal(size=(4, 8)))
    np.save(tmp_path / "test_label.npy", np.array(["office", "kitchen"] * 2))
    reader = SunRGBDFeatures(tmp_path, held_out_fraction=0.2)
    assert len(reader.samples("held_out")) == 2
    inputs, ys = collect(reader.as_dataset("test", batch_size=4))
    assert inputs["rgb"].shape == (4, 8) and inputs["rgb"].dtype == np.float32
    np.testing.assert_array_equal(ys[0].numpy(), [16, 11, 16, 11])
    np.save(tmp_path / "test_label.npy", np.array(["office", "gym"] * 2))
    with pytest.raises(DataError, match="test_label.npy.*'gym'"):
        SunRGBDFeatures(tmp_path).samples("test")


def test_mer_multi_arrays_and_clips(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "train.npz",
        audio=rng.normal(size=(6, 5, 4)),
        text=rng.normal(size=(6, 7)),
        video=rng.normal(size=(6, 3)),
        emotion=np.array([0, 1, 2, 3, 4, 5]),
        valence=np.linspace(-5, 5, 6),
    )
    rows = [("c1", "worry", "-1.5"), ("c2", "happiness", "3")]
    for name, _, _ in rows:
        for m, shape in (("audio", (3, 4)), ("text", (7,)), ("video", (3,))):
            folder = tmp_path / "features" / m
            folder.mkdir(parents=True, exist_ok=True)
            length = 2 if name == "c1" and m == "audio" else None
            arr = rng.normal(size=(length, 4) if length else shape)
            np.save(folder / f"{name}.npy", arr)
    (tmp_path / "test-label.csv").write_text(
        "name,discrete,valence\n" + "".join(",".join(r) + "\n" for r in rows)
    )
    reader = MerMulti(tmp_path, target="both", max_len=5, held_out_fraction=0.0)
    inputs, ys = collect(reader.as_dataset("test", batch_size=2))
    assert inputs["audio"].shape == (2, 5, 4)  # Zero-padded to max_len.
    assert np.all(inputs["audio"][0, 2:] == 0)
    np.testing.assert_array_equal(ys[0]["label"].numpy(), [4, 0])
    np.testing.assert_allclose(ys[0]["valence"].numpy(), [-1.5, 3.0])
    inputs, ys = collect(reader.as_dataset("train", batch_size=6))
    assert inputs["text"].shape == (6, 7)
    valence = MerMulti(tmp_path, target="valence")
    assert collect(valence.as_dataset("test"))[1][0].dtype.name == "float32"
    (tmp_path / "test-label.csv").write_text(
        "name,discrete,valence\nc1,joy,0\n"
    )
    with pytest.raises(DataError, match=r"test-label.csv:2.*'joy'"):
        MerMulti(tmp_path).samples("test")
    (tmp_path / "test-label.csv").write_text(
        "name,discrete,valence\nc1,worry,7\n"
    )
    with pytest.raises(DataError, match=r"test-label.csv:2.*outside"):
        MerMulti(tmp_path).samples("test")


def test_readers_read_the_embedded_datasets(tmp_path):
    from keras_olm.embedded import rgbd_rooms

    root = rgbd_rooms.generate(
        tmp_path / "rooms", samples_per_class=2, image_size=16, verbose=False
    )
    reader = SunRGBD(root, image_size=(16, 16), held_out_fraction=0.0)
    assert len(reader.samples("train")) == len(reader.samples("test")) == 19
    x, y = next(iter(reader.as_dataset("test", batch_size=19)))
    assert x["rgb"].shape == (19, 16, 16, 3) and x["depth"].shape[-1] == 1
    assert sorted(y.numpy().tolist()) == list(range(19))
    assert 0.0 < float(x["depth"].numpy().max()) <= 1.0

    pytest.importorskip("espeakng_loader")
    from keras_olm.embedded import av_digits

    root = av_digits.generate(
        tmp_path / "digits", num_clips=12, num_speakers=4, verbose=False
    )
    reader = CremaD(root, class_names=av_digits.LABELS, image_size=(16, 16))
    records = reader.samples("test")
    x, y = next(iter(reader.as_dataset("test", batch_size=len(records))))
    assert x["audio"].shape[1:] == (257, 188, 1)
    assert y.numpy().tolist() == [r["label"] for r in records]
    assert all(
        av_digits.LABELS[r["label"]] == r["id"].rsplit("_", 1)[1]
        for r in records
    )


def test_training_frames_and_crops_are_seeded(vggsound_root):
    reader = VGGSound(vggsound_root, held_out_fraction=0.0, **SMALL)

    def epoch(seed):
        ds = reader.as_dataset("train", batch_size=3, shuffle=False, seed=seed)
        x, _ = next(iter(ds))
        return x["audio"].numpy(), x["visual"].numpy()

    a1, v1 = epoch(1)
    a2, v2 = epoch(1)
    a3, v3 = epoch(2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(a1, a3) and not np.array_equal(v1, v3)
    # Evaluation is fixed whatever the seed.
    t1 = reader.as_dataset("test", batch_size=2, seed=1)
    t2 = reader.as_dataset("test", batch_size=2, seed=2)
    np.testing.assert_array_equal(
        next(iter(t1))[0]["visual"].numpy(), next(iter(t2))[0]["visual"].numpy()
    )
