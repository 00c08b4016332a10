"""keras-olm: balanced multimodal learning for Keras 3.

The public surface: `BalancedMultimodalModel`, the `OLM` balancer and the
field's others (`OGMGE`, `GBlend`, `MMCosine`, `GradNorm`, `PMR`, `AGM`,
`MLA`, `MMPareto`), the fusion layers (their base `Fusion`, `LateFusion`,
`FiLMFusion`, `GatedFusion`, `AttentionFusion`), `split_held_out`,
`compare_balancers` (balancers trained side by side on the user's own
model and data), `load_model` (`keras.saving.load_model` that names a
damaged file), and the `balancers`, `callbacks`, `synthetic` (small
in-memory array problems) modules. Imported on their own:
`keras_olm.data` (readers of datasets on disk) and `keras_olm.embedded`
(writers of the project's embedded datasets).
"""

# First: hides the GPUs from TensorFlow under the JAX and torch backends.
from keras_olm import _devices  # noqa: F401
from keras_olm import balancers
from keras_olm import callbacks
from keras_olm import synthetic
from keras_olm.balancers import AGM
from keras_olm.balancers import MLA
from keras_olm.balancers import OGMGE
from keras_olm.balancers import OLM
from keras_olm.balancers import PMR
from keras_olm.balancers import Balancer
from keras_olm.balancers import GBlend
from keras_olm.balancers import GradNorm
from keras_olm.balancers import JointTraining
from keras_olm.balancers import MMCosine
from keras_olm.balancers import MMPareto
from keras_olm.comparison import BalancerComparison
from keras_olm.comparison import compare_balancers
from keras_olm.held_out import split_held_out
from keras_olm.layers import IRFB
from keras_olm.layers import MBT
from keras_olm.layers import AttentionFusion
from keras_olm.layers import FiLMFusion
from keras_olm.layers import Fusion
from keras_olm.layers import GatedFusion
from keras_olm.layers import LateFusion
from keras_olm.layers import SequenceEncoder
from keras_olm.models import BalancedMultimodalModel
from keras_olm.models import NonFiniteLossError
from keras_olm.models import load_model

__version__ = "0.1.0"

__all__ = [
    "AGM",
    "IRFB",
    "MBT",
    "MLA",
    "OGMGE",
    "OLM",
    "PMR",
    "AttentionFusion",
    "BalancedMultimodalModel",
    "Balancer",
    "BalancerComparison",
    "FiLMFusion",
    "Fusion",
    "GBlend",
    "GatedFusion",
    "GradNorm",
    "JointTraining",
    "LateFusion",
    "MMCosine",
    "MMPareto",
    "NonFiniteLossError",
    "SequenceEncoder",
    "balancers",
    "callbacks",
    "compare_balancers",
    "load_model",
    "split_held_out",
    "synthetic",
]
