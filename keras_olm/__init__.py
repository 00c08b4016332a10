"""keras-olm: balanced multimodal learning for Keras 3.

The public surface: `BalancedMultimodalModel`, the `OLM` balancer, the
fusion layers (`LateFusion`, `FiLMFusion`, `GatedFusion`,
`AttentionFusion`), `holdout_split`, and the `balancers`, `callbacks`,
`synthetic` modules.
"""

from keras_olm import balancers
from keras_olm import callbacks
from keras_olm import synthetic
from keras_olm.balancers import OLM
from keras_olm.balancers import Balancer
from keras_olm.balancers import JointTraining
from keras_olm.layers import IRFB
from keras_olm.layers import MBT
from keras_olm.layers import AttentionFusion
from keras_olm.layers import FiLMFusion
from keras_olm.layers import GatedFusion
from keras_olm.layers import LateFusion
from keras_olm.layers import SequenceEncoder
from keras_olm.models import BalancedMultimodalModel
from keras_olm.models import NonFiniteLossError
from keras_olm.models.inputs import holdout_split

__version__ = "0.1.0"

__all__ = [
    "IRFB",
    "MBT",
    "OLM",
    "AttentionFusion",
    "BalancedMultimodalModel",
    "Balancer",
    "FiLMFusion",
    "GatedFusion",
    "JointTraining",
    "LateFusion",
    "NonFiniteLossError",
    "SequenceEncoder",
    "balancers",
    "callbacks",
    "holdout_split",
    "synthetic",
]
