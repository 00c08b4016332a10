"""The training step: shared in `step.py`, one short trainer per backend.

Like `keras/src/backend/*/trainer.py`, each backend's module knows how its
backend takes gradients and carries state through a step, and nothing
else: the step itself is `step.TrainingStep`, in `keras.ops`.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_olm.trainers.tensorflow_trainer import StepMixin
elif _BACKEND == "jax":
    from keras_olm.trainers.jax_trainer import StepMixin
elif _BACKEND == "torch":
    from keras_olm.trainers.torch_trainer import StepMixin
else:
    raise ImportError(
        f"keras-olm supports the tensorflow, jax and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )

__all__ = ["StepMixin"]
