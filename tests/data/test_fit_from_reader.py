"""A short fit of BalancedMultimodalModel from a reader's datasets."""

import numpy as np
import pytest

from keras_olm.data import SunRGBD

keras_olm = pytest.importorskip("keras_olm")
keras = pytest.importorskip("keras")


def tiny_encoder():
    return keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8)]
    )


def test_fit_sunrgbd_reader_with_dev_split(sunrgbd_root):
    if not hasattr(keras_olm, "BalancedMultimodalModel"):
        pytest.skip("BalancedMultimodalModel is not available yet.")
    keras.utils.set_random_seed(0)
    reader = SunRGBD(sunrgbd_root, image_size=(16, 16), held_out_fraction=0.3)
    train = reader.as_dataset("train", batch_size=2, seed=0)
    held_out = reader.as_dataset("held_out", batch_size=2)
    model = keras_olm.BalancedMultimodalModel(
        {"rgb": tiny_encoder(), "depth": tiny_encoder()},
        num_classes=reader.num_classes,
    )
    model.compile(optimizer="adam")
    history = model.fit(
        train, held_out_data=held_out, epochs=1, steps_per_epoch=2, verbose=0
    )
    assert np.isfinite(history.history["loss"][-1])
    probs = model.predict(reader.as_dataset("test", batch_size=4), verbose=0)
    assert probs.shape == (3, 19)


def test_fit_from_cached_readers(cremad_root, tmp_path):
    # Two epochs fed by a directory cache (train) and a memory cache
    # (held-out): filled in the first, read in the second.
    from keras_olm.data import CremaD

    if not hasattr(keras_olm, "BalancedMultimodalModel"):
        pytest.skip("BalancedMultimodalModel is not available yet.")
    keras.utils.set_random_seed(0)
    options = dict(image_size=16, held_out_fraction=0.3, seed=0)
    reader = CremaD(cremad_root, cache=str(tmp_path / "cache"), **options)
    held_out_reader = CremaD(cremad_root, cache="memory", **options)
    model = keras_olm.BalancedMultimodalModel(
        {"audio": tiny_encoder(), "visual": tiny_encoder()},
        num_classes=reader.num_classes,
    )
    model.compile(optimizer="adam")
    history = model.fit(
        reader.as_dataset("train", batch_size=2, seed=0),
        held_out_data=held_out_reader.as_dataset("held_out", batch_size=2),
        epochs=2,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(p.suffix == ".index" for p in (tmp_path / "cache").iterdir())
