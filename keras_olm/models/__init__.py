"""Models."""

from keras_olm.models.balanced_model import BalancedMultimodalModel
from keras_olm.models.saving import load_model
from keras_olm.trainers.state import NonFiniteLossError

__all__ = ["BalancedMultimodalModel", "NonFiniteLossError", "load_model"]
