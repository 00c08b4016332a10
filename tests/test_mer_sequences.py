"""Embedded MER sequences: layout, determinism, reader, informativeness."""

import hashlib
import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from keras_olm.data import MerMulti
from keras_olm.embedded import mer_sequences


def tree_digest(root):
    h = hashlib.sha1()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.startswith(".keras_olm"):
                continue
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mer") / "a"
    return mer_sequences.generate(root, num_train=40, num_test=20, seed=3)


def test_layout_and_cache(tiny_root, tmp_path):
    lines = (tiny_root / "train-label.csv").read_text().splitlines()
    assert lines[0] == "name,discrete,valence"
    assert len(lines) == 41
    name, emotion, valence = lines[1].split(",")
    assert emotion in mer_sequences.CLASSES
    assert -5.0 <= float(valence) <= 5.0
    for m in mer_sequences.MODALITIES:
        clip = np.load(tiny_root / "features" / m / f"{name}.npy")
        assert clip.dtype == np.float32
        lo, hi = mer_sequences.DEFAULT_LENGTHS[m]
        assert lo <= clip.shape[0] <= hi
        assert clip.shape[1] == mer_sequences.DEFAULT_DIMS[m]
    # Same arguments: same files; the second call reuses the directory.
    again = mer_sequences.generate(
        tmp_path / "b", num_train=40, num_test=20, seed=3
    )
    assert tree_digest(again) == tree_digest(tiny_root)
    stamp = os.path.getmtime(tiny_root / "test-label.csv")
    mer_sequences.generate(tiny_root, num_train=40, num_test=20, seed=3)
    assert os.path.getmtime(tiny_root / "test-label.csv") == stamp
    other = mer_sequences.generate(
        tmp_path / "c", num_train=40, num_test=20, seed=4
    )
    assert tree_digest(other) != tree_digest(tiny_root)
    with pytest.raises(FileExistsError, match="other parameters"):
        mer_sequences.generate(tiny_root, num_train=40, num_test=20, seed=4)


def test_reader_reads_the_generated_copy(tiny_root):
    reader = MerMulti(
        tiny_root,
        modalities=mer_sequences.MODALITIES,
        target="both",
        max_len=24,
        held_out_fraction=0.0,
    )
    features, emotion, valence = mer_sequences.make_clips(
        20, seed=[3, 1], modalities=mer_sequences.MODALITIES
    )
    records = reader.samples("test")
    assert [r["label"] for r in records] == emotion.tolist()
    np.testing.assert_allclose(
        [r["valence"] for r in records], valence, atol=1e-6
    )
    for m in mer_sequences.MODALITIES:
        for record, clip in zip(records, features[m], strict=True):
            assert record[m].shape == (24, clip.shape[1])
            np.testing.assert_array_equal(record[m][: len(clip)], clip)
            assert not record[m][len(clip) :].any()  # Zero padding.
    x, y = next(iter(reader.as_dataset("test", batch_size=20)))
    assert tuple(x["hog"].shape) == (20, 24, 16)
    np.testing.assert_array_equal(y["label"].numpy(), emotion)


def test_both_targets_feed_a_regression_model(tiny_root):
    import keras

    import keras_olm

    reader = MerMulti(
        tiny_root, modalities=("audio", "text"), target="both", max_len=24
    )
    keras.utils.set_random_seed(0)
    encoders = {
        m: keras.Sequential(
            [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(8)]
        )
        for m in ("audio", "text")
    }
    model = keras_olm.BalancedMultimodalModel(
        encoders,
        num_classes=len(mer_sequences.CLASSES),
        regression_targets={"valence": 1},
    )
    model.compile(optimizer="adam")
    history = model.fit(
        reader.as_dataset("train", batch_size=16, seed=0),
        held_out_data=reader.as_dataset("held_out", batch_size=16),
        epochs=1,
        verbose=0,
    )
    assert np.isfinite(history.history["valence_mse"][0])
    assert np.isfinite(history.history["fused_loss"][0])


def pooled(features, modalities):
    return np.concatenate(
        [np.stack([c.mean(0) for c in features[m]]) for m in modalities], 1
    )


def weighted_f1(train, test, modalities):
    clf = LogisticRegression(max_iter=1000)
    clf.fit(pooled(train[0], modalities), train[1])
    pred = clf.predict(pooled(test[0], modalities))
    return f1_score(test[1], pred, average="weighted")


def test_defaults_audio_dominates_and_fusion_helps():
    train = mer_sequences.make_clips(900, seed=0)
    test = mer_sequences.make_clips(400, seed=1)
    f1 = {m: weighted_f1(train, test, (m,)) for m in mer_sequences.MODALITIES}
    fused = weighted_f1(train, test, mer_sequences.MODALITIES)
    assert f1["audio"] > max(f1["video"], f1["hog"]) + 0.08
    assert f1["text"] < min(f1["video"], f1["hog"])
    assert fused > f1["audio"] + 0.05
    # Valence follows the emotion: class means in the declared order.
    means = [test[2][test[1] == k].mean() for k in range(6)]
    assert np.argmax(means) == 0 and np.argmin(means) == 3


def test_informativeness_knob_moves_the_dominant_modality():
    knobs = {"audio": 0.3, "text": 0.95, "video": 0.6, "hog": 0.55}
    train = mer_sequences.make_clips(600, seed=0, informativeness=knobs)
    test = mer_sequences.make_clips(300, seed=1, informativeness=knobs)
    text = weighted_f1(train, test, ("text",))
    audio = weighted_f1(train, test, ("audio",))
    assert text > audio + 0.2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {
                "informativeness": {
                    **mer_sequences.DEFAULT_INFORMATIVENESS,
                    "audio": 1.5,
                }
            },
            r"informativeness\['audio'\] must be in \[0, 1\]",
        ),
        ({"informativeness": {"audio": 0.5}}, "no entry for modalities"),
        (
            {"lengths": {**mer_sequences.DEFAULT_LENGTHS, "text": (5, 2)}},
            r"lengths\['text'\]",
        ),
    ],
)
def test_bad_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mer_sequences.make_clips(4, **kwargs)
