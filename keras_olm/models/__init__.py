"""Models."""

from keras_olm.models.balanced_model import BalancedMultimodalModel
from keras_olm.models.balanced_model import NonFiniteLossError

__all__ = ["BalancedMultimodalModel", "NonFiniteLossError"]
