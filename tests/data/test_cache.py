"""The readers' `cache`: the deterministic decoding kept, augmentation not."""

import os

import numpy as np
import pytest
import tensorflow as tf
from data_layouts import write_frames
from data_layouts import write_wav

from keras_olm.data import CremaD
from keras_olm.data import DataError
from keras_olm.data import SunRGBD
from keras_olm.data import VGGSound


def _passes(ds, n=2):
    """`n` passes over a dataset, each a list of `(inputs, target)`."""
    return [list(ds.as_numpy_iterator()) for _ in range(n)]


def _assert_same(a, b):
    """Equal samples; spectrograms to float32 rounding (a cache computes
    them per clip, the pipeline per batch)."""
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert sorted(xa) == sorted(xb)
        for k in xa:
            assert xa[k].shape == xb[k].shape
            if k == "audio":
                np.testing.assert_allclose(xa[k], xb[k], atol=1e-5, rtol=0)
            else:
                np.testing.assert_array_equal(xa[k], xb[k])
        np.testing.assert_array_equal(ya, yb)


def _readers(make, tmp_path):
    return {
        None: make(None),
        "memory": make("memory"),
        "dir": make(str(tmp_path / "cache")),
    }


@pytest.mark.parametrize("training", [True, False])
def test_cached_av_samples_equal_uncached(vggsound_root, tmp_path, training):
    # VGGSound: random audio crops and 3 random frames of 4 in training.
    readers = _readers(
        lambda cache: VGGSound(
            vggsound_root, image_size=16, held_out_fraction=0.0, cache=cache
        ),
        tmp_path,
    )
    out = {
        k: _passes(
            r.as_dataset(
                "train", batch_size=2, shuffle=False, training=training, seed=3
            )
        )
        for k, r in readers.items()
    }
    for k in ("memory", "dir"):
        for epoch in range(2):
            _assert_same(out[None][epoch], out[k][epoch])
    files = os.listdir(tmp_path / "cache")
    assert any(f.endswith(".index") for f in files)
    assert not any(f.endswith(".lockfile") for f in files)
    first, second = out["memory"]
    if training:  # Crops and frames are drawn anew each epoch.
        assert not np.array_equal(first[0][0]["audio"], second[0][0]["audio"])
        assert not np.array_equal(first[0][0]["visual"], second[0][0]["visual"])
    else:
        _assert_same(first, second)


def test_cached_cremad_training_equal_uncached(cremad_root, tmp_path):
    # CREMA-D: no crop, so the spectrogram itself is cached; 1 of 2
    # frames drawn per epoch.
    readers = _readers(
        lambda cache: CremaD(
            cremad_root, image_size=16, held_out_fraction=0.0, cache=cache
        ),
        tmp_path,
    )
    out = {
        k: _passes(r.as_dataset("train", batch_size=3, shuffle=False, seed=1))
        for k, r in readers.items()
    }
    for k in ("memory", "dir"):
        for epoch in range(2):
            _assert_same(out[None][epoch], out[k][epoch])
    first, second = out["memory"]
    visual = [np.concatenate([x["visual"] for x, _ in e]) for e in out["dir"]]
    assert not np.array_equal(*visual)  # another frame for some clips
    np.testing.assert_array_equal(first[0][0]["audio"], second[0][0]["audio"])


def test_cached_dir_is_reused_by_a_new_reader(
    cremad_root, tmp_path, monkeypatch
):
    def make():
        return CremaD(cremad_root, image_size=16, cache=str(tmp_path / "c"))

    expected = _passes(make().as_dataset("test", batch_size=4), 1)[0]
    # A second reader whose decoding would give silence: it reads the
    # files of the first one.
    from keras_olm.data import audio_visual

    monkeypatch.setattr(
        audio_visual, "load_clip", lambda *args: tf.zeros([66150])
    )
    got = _passes(make().as_dataset("test", batch_size=4), 1)[0]
    _assert_same(expected, got)
    # Without the cache, it would.
    silent = _passes(
        CremaD(cremad_root, image_size=16).as_dataset("test", batch_size=4), 1
    )[0]
    assert np.all(silent[0][0]["audio"] == silent[0][0]["audio"][0, 0, 0])


def test_cached_sunrgbd_equal_uncached_and_shuffled(sunrgbd_root, tmp_path):
    readers = _readers(
        lambda cache: SunRGBD(sunrgbd_root, image_size=8, cache=cache),
        tmp_path,
    )
    plain = _passes(
        readers[None].as_dataset("train", batch_size=None, shuffle=False)
    )
    for k in ("memory", "dir"):
        got = _passes(
            readers[k].as_dataset("train", batch_size=None, shuffle=False)
        )
        for epoch in range(2):
            _assert_same(plain[epoch], got[epoch])
    # Shuffled: the same samples, in a new order each epoch.
    shuffled = _passes(
        readers["memory"].as_dataset("train", batch_size=None, seed=0), 3
    )

    def key(sample):
        return sample[0]["rgb"].tobytes()

    for epoch in shuffled:
        assert sorted(map(key, epoch)) == sorted(map(key, plain[0]))
    orders = {tuple(map(key, epoch)) for epoch in shuffled}
    assert len(orders) > 1


def test_cache_key_changes_with_settings_and_files(cremad_root, tmp_path):
    def key(**kwargs):
        return CremaD(cremad_root, cache="memory", **kwargs).cache_key("train")

    base = key()
    assert key() == base
    assert key(audio="vggsound") != base
    assert key(image_size=32) != base
    assert key(normalize="unit") != base
    assert key(num_frames=2) != base
    reader = CremaD(cremad_root, cache="memory")
    assert reader.cache_key("train", training=False) != base
    assert reader.cache_key("test") != reader.cache_key("train")
    # A source file rewritten (new size and time) or touched.
    clip = reader.samples("train")[0]
    os.utime(clip["audio"], ns=(1, 1))
    touched = key()
    assert touched != base
    write_wav(clip["audio"], np.zeros(100, np.float32))
    assert key() not in (base, touched)
    frame = clip["frames"].split("\n")[0]
    before = key()
    write_frames(os.path.dirname(frame), n=1, seed=99)
    assert key() != before
    # The file prefix carries the key.
    reader = CremaD(cremad_root, cache=str(tmp_path / "c"))
    assert reader.cache_key("train")[:24] in reader.cache_path("train")


def test_bad_cache_dir_is_a_clear_error(cremad_root, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        CremaD(cremad_root, cache=str(not_a_dir))
    with pytest.raises(DataError, match="Cannot create the cache directory"):
        CremaD(cremad_root, cache=str(not_a_dir / "sub"))
    with pytest.raises(ValueError, match="`cache` must be"):
        CremaD(cremad_root, cache=3)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):
            with pytest.raises(DataError, match="not writable"):
                CremaD(cremad_root, cache=str(locked))
    finally:
        locked.chmod(0o700)


def test_stale_lock_file_is_removed(cremad_root, tmp_path):
    reader = CremaD(cremad_root, image_size=16, cache=str(tmp_path / "c"))
    prefix = reader.cache_path("test")
    with open(f"{prefix}_0.lockfile", "w") as f:
        f.write("left by an interrupted run")
    batches = _passes(reader.as_dataset("test", batch_size=4), 1)[0]
    assert sum(len(y) for _, y in batches) == 3
    assert os.path.exists(f"{prefix}.index")


def test_cache_with_skips_counts_once(cremad_root):
    clip = sorted(os.listdir(cremad_root / "AudioWAV"))[0]
    (cremad_root / "AudioWAV" / clip).write_bytes(b"RIFF" + b"\0" * 60)
    reader = CremaD(
        cremad_root,
        image_size=16,
        held_out_fraction=0.0,
        on_error="skip",
        cache="memory",
    )
    epochs = _passes(
        reader.as_dataset("train", batch_size=None, shuffle=False), 2
    )
    assert [len(e) for e in epochs] == [8, 8]
    assert reader.skip_report("train").count == 1
