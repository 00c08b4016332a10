"""keras-olm: balanced multimodal learning for Keras 3."""

__version__ = "0.1.0"
