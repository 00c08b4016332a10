"""Embedded datasets: generated offline, cached, in the real on-disk layouts.

- `rgbd_rooms`: ray-traced RGB-D rooms for the 19 SUN RGB-D scene classes,
  in the SUN RGB-D layout.
- `av_digits`: real handwritten digits paired with digits spoken by
  espeak-ng, in the CREMA-D layout (needs the optional `espeakng-loader`).
- `mer_sequences`: audio / text / video / HOG feature sequences with an
  emotion and a valence, in the MER-MULTI layout.

The `generate(...)` functions write the dataset once into a cache directory
(`$KERAS_OLM_CACHE`, default `~/.cache/keras_olm`) and return its root.
"""

from keras_olm.datasets import av_digits
from keras_olm.datasets import mer_sequences
from keras_olm.datasets import rgbd_rooms

__all__ = ["av_digits", "mer_sequences", "rgbd_rooms"]
