"""Fusion layers."""

from keras_olm.layers.fusion import LateFusion

__all__ = ["LateFusion"]
