"""Balancers: how the heads' losses train a multimodal model."""

from keras_olm.balancers.base import Balancer
from keras_olm.balancers.base import JointTraining
from keras_olm.balancers.base import StepMeasurements
from keras_olm.balancers.olm import OLM

__all__ = ["OLM", "Balancer", "JointTraining", "StepMeasurements"]
