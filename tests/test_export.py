"""`model.export` after `fit`: the served endpoint returns `predict`'s
probabilities (TensorFlow and JAX; Keras' torch export takes no dict
inputs)."""

import keras
import numpy as np
import pytest
from olm_testing import tiny_model

pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras' torch export does not take a dict of inputs",
)


def test_export_after_fit_serves_the_predicted_probabilities(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = {
        "fast": rng.normal(size=(32, 16)).astype("float32"),
        "slow": rng.normal(size=(32, 64)).astype("float32"),
    }
    y = rng.integers(0, 4, 32)
    model = tiny_model()
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    model.export(str(tmp_path / "exported"))
    served = tf.saved_model.load(str(tmp_path / "exported"))
    probs = served.serve(x)
    np.testing.assert_allclose(
        np.asarray(probs), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
