"""Fusion layers."""

from keras_olm.layers.base import FUSED
from keras_olm.layers.base import Fusion
from keras_olm.layers.fusion import AttentionFusion
from keras_olm.layers.fusion import FiLMFusion
from keras_olm.layers.fusion import GatedFusion
from keras_olm.layers.fusion import LateFusion
from keras_olm.layers.irfb import IRFB
from keras_olm.layers.irfb import AuthorsIRFBBlock
from keras_olm.layers.irfb import IRFBBlock
from keras_olm.layers.mbt import MBT
from keras_olm.layers.transformer import SequenceEncoder
from keras_olm.layers.transformer import TransformerLayer

__all__ = [
    "FUSED",
    "IRFB",
    "MBT",
    "AttentionFusion",
    "AuthorsIRFBBlock",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "IRFBBlock",
    "LateFusion",
    "SequenceEncoder",
    "TransformerLayer",
]
