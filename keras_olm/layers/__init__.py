"""Fusion layers."""

import functools

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

#: Names accepted by `get`, each mapped to the callable that builds that
#: fusion layer from keyword arguments: a `Fusion` subclass, or a
#: `functools.partial` of one that fixes its mode or variant. Fusions whose
#: `needs_sequence_encoders` is `True` (IRFB, MBT) fuse `SequenceEncoder`
#: outputs; the others fuse any encoder outputs.
FUSIONS = {
    "concat": functools.partial(LateFusion, mode="concat"),
    "sum": functools.partial(LateFusion, mode="sum"),
    "film": FiLMFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "irfb": IRFB,
    "irfb_authors": functools.partial(IRFB, variant="authors"),
    "mbt": MBT,
}


def get(identifier, **kwargs):
    """Builds a fusion layer from its registered name.

    Args:
        identifier: str. A key of `FUSIONS` (case-insensitive).
        **kwargs: passed to the layer's constructor (`MBT` requires
            `num_layers`, `num_heads` and `intermediate_dim`).

    Returns:
        A `Fusion`.

    Example:
    ```python
    fusion = keras_olm.layers.get("sum", units=32)  # LateFusion("sum", 32)
    ```
    """
    key = str(identifier).lower()
    if key not in FUSIONS:
        raise ValueError(
            f"Unknown fusion {identifier!r}; registered: {sorted(FUSIONS)}."
        )
    return FUSIONS[key](**kwargs)


__all__ = [
    "FUSED",
    "FUSIONS",
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
    "get",
]
