"""Balancers: how the heads' losses train a multimodal model."""

from keras_olm.balancers.agm import AGM
from keras_olm.balancers.base import Balancer
from keras_olm.balancers.base import HeldOutSchedule
from keras_olm.balancers.base import JointTraining
from keras_olm.balancers.base import ModalityBalancer
from keras_olm.balancers.base import StepRecord
from keras_olm.balancers.gblend import GBlend
from keras_olm.balancers.gradnorm import GradNorm
from keras_olm.balancers.head_stopping import HeadStopping
from keras_olm.balancers.mla import MLA
from keras_olm.balancers.mla import SharedHead
from keras_olm.balancers.mla import UncertaintyFusion
from keras_olm.balancers.mmcosine import CosineHead
from keras_olm.balancers.mmcosine import MMCosine
from keras_olm.balancers.mmpareto import MMPareto
from keras_olm.balancers.ogm_ge import OGMGE
from keras_olm.balancers.olm import OLM
from keras_olm.balancers.olm import ClosedForm
from keras_olm.balancers.olm import LogitLossDescent
from keras_olm.balancers.olm import RateEstimate
from keras_olm.balancers.olm import Rebalancing
from keras_olm.balancers.pmr import PMR
from keras_olm.balancers.pmr import PrototypeHead

#: Names accepted by `BalancedMultimodalModel(balancer=...)` and `get`,
#: each mapped to the class built with its defaults.
REGISTRY = {
    "olm": OLM,
    "heads": Balancer,
    "multihead": Balancer,
    "joint": JointTraining,
    "ogm_ge": OGMGE,
    "mmcosine": MMCosine,
    "gblend": GBlend,
    "gradnorm": GradNorm,
    "pmr": PMR,
    "agm": AGM,
    "mla": MLA,
    "mmpareto": MMPareto,
}


def get(identifier, **kwargs):
    """Builds a balancer from its registered name.

    Args:
        identifier: str. A key of `REGISTRY` (case-insensitive).
        **kwargs: passed to the balancer's constructor.

    Returns:
        A `Balancer`.
    """
    key = str(identifier).lower()
    if key not in REGISTRY:
        raise ValueError(
            f"Unknown balancer {identifier!r}; registered: "
            f"{sorted(REGISTRY)}, or None, or a keras_olm.balancers.Balancer "
            "instance."
        )
    return REGISTRY[key](**kwargs)


__all__ = [
    "AGM",
    "GBlend",
    "GradNorm",
    "MLA",
    "MMCosine",
    "MMPareto",
    "OGMGE",
    "OLM",
    "PMR",
    "REGISTRY",
    "Balancer",
    "ClosedForm",
    "CosineHead",
    "HeadStopping",
    "HeldOutSchedule",
    "JointTraining",
    "LogitLossDescent",
    "ModalityBalancer",
    "PrototypeHead",
    "RateEstimate",
    "Rebalancing",
    "SharedHead",
    "StepRecord",
    "UncertaintyFusion",
    "get",
]
