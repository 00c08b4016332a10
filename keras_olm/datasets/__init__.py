"""Embedded datasets: generated offline, cached, in the real on-disk layouts.

- `rgbd_rooms`: ray-traced RGB-D rooms for the 19 SUN RGB-D scene classes,
  in the SUN RGB-D layout.
"""

from keras_olm.datasets import rgbd_rooms

__all__ = ["rgbd_rooms"]
