"""TensorFlow's devices when TensorFlow only runs the input pipelines."""

import warnings

import keras


def hide_gpus_from_tensorflow(backend=None):
    """Hides the GPUs from TensorFlow unless it is the Keras backend.

    Under the JAX and torch backends TensorFlow only runs tf.data, on the
    CPU; left alone it would claim GPU memory that the backend needs.

    Args:
        backend: str or `None`. The Keras backend; `None` for the active
            one.

    Returns:
        Whether the GPUs were hidden.
    """
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        return False
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        warnings.warn(
            "keras_olm: TensorFlow had initialized its devices before "
            "keras_olm was imported, so its GPUs stay visible to it and it "
            f"may claim GPU memory that the {backend} backend needs. "
            "Import keras_olm before using TensorFlow.",
            stacklevel=3,
        )
        return False
    return True


hide_gpus_from_tensorflow()
