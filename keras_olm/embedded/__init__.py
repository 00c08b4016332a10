"""Writers of the embedded datasets to disk. Also: data (readers), synthetic.

The project's own datasets: generated offline, cached, and written to disk
in the real datasets' layouts, so that the readers of `keras_olm.data`
read them as they read the real data. `keras_olm.synthetic` makes small
in-memory array problems instead.

- `rgbd_rooms`: ray-traced RGB-D rooms for the 19 SUN RGB-D scene classes,
  in the SUN RGB-D layout.
- `av_digits`: real handwritten digits paired with digits spoken by
  espeak-ng, in the CREMA-D layout (needs the optional `espeakng-loader`).
- `mer_sequences`: audio / text / video / HOG feature sequences with an
  emotion and a valence, in the MER-MULTI layout.

The `generate(...)` functions write the dataset once into a cache directory
(`$KERAS_OLM_CACHE`, default `~/.cache/keras_olm`) and return its root.
"""

from keras_olm.embedded import av_digits
from keras_olm.embedded import mer_sequences
from keras_olm.embedded import rgbd_rooms

__all__ = ["av_digits", "mer_sequences", "rgbd_rooms"]
