"""Fusion layers."""

from keras_olm.layers.fusion import AttentionFusion
from keras_olm.layers.fusion import FiLMFusion
from keras_olm.layers.fusion import GatedFusion
from keras_olm.layers.fusion import LateFusion

__all__ = ["AttentionFusion", "FiLMFusion", "GatedFusion", "LateFusion"]
