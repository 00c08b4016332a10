"""Readers of datasets on disk. Also: embedded (writers), synthetic (arrays).

Readers and tf.data input pipelines for datasets stored in their real
on-disk layouts: the field's datasets, and the project's embedded stand-ins
that `keras_olm.embedded` generates and writes in the same layouts.
`keras_olm.synthetic` makes small in-memory array problems instead.

Every reader yields `({modality: tensor}, label)` batches that feed
`BalancedMultimodalModel.fit` on every Keras backend (the pipelines are
tf.data). Splits: the dataset's own (`"train"`, `"test"`, ...) and `"held_out"`,
a seeded fraction held out of the official training split for OLM's held_out
losses (`"train"` is the rest; the two are disjoint).

Readers (each documents and validates its on-disk layout):

- `CremaD`, `KineticsSounds`, `VGGSound`, `AVE`: `"audio"` spectrograms
  `(freq, time, 1)` and `"visual"` frames `(h, w, 3)` or `(k, h, w, 3)`.
- `SunRGBD`: `"rgb"` `(h, w, 3)` and `"depth"` `(h, w, 1)`.
- `SunRGBDFeatures`, `MerMulti`: pre-extracted feature arrays.

Pipelines: `audio_to_spectrogram` with the presets of `AUDIO_PRESETS`,
`load_image`, `load_frames`, `load_sunrgbd_depth`; preprocessing:
`extract_video` / `extract_directory` (also
`python -m keras_olm.data.extract_frames`). Bad files raise `DataError`
naming the file, or are counted in a `SkipReport` with `on_error="skip"`.
The readers of files take `cache=None | "memory" | <directory>`: the
deterministic decoding is kept after the first pass (`Dataset.cache`),
random frame draws and crops follow it every epoch.

Example:

```python
reader = keras_olm.data.CremaD("/data/CREMA-D")
train = reader.as_dataset("train", batch_size=64, seed=0)
held_out = reader.as_dataset("held_out", batch_size=64)
model = keras_olm.BalancedMultimodalModel(encoders, reader.num_classes)
model.compile(optimizer="adam")
model.fit(train, held_out_data=held_out, epochs=10)
```
"""

from keras_olm.data.audio import AUDIO_PRESETS
from keras_olm.data.audio import SpectrogramConfig
from keras_olm.data.audio import audio_to_spectrogram
from keras_olm.data.audio import fix_length
from keras_olm.data.audio import get_audio_preset
from keras_olm.data.audio import load_audio
from keras_olm.data.audio import load_clip
from keras_olm.data.audio import resample
from keras_olm.data.audio import spectrogram
from keras_olm.data.audio_visual import AVE
from keras_olm.data.audio_visual import CREMAD_CLASSES
from keras_olm.data.audio_visual import CremaD
from keras_olm.data.audio_visual import KineticsSounds
from keras_olm.data.audio_visual import VGGSound
from keras_olm.data.errors import DataError
from keras_olm.data.errors import SkipReport
from keras_olm.data.features import MER_CLASSES
from keras_olm.data.features import MerMulti
from keras_olm.data.features import SunRGBDFeatures
from keras_olm.data.image import IMAGENET_MEAN
from keras_olm.data.image import IMAGENET_STD
from keras_olm.data.image import decode_image
from keras_olm.data.image import decode_sunrgbd_depth
from keras_olm.data.image import encode_sunrgbd_depth
from keras_olm.data.image import load_frames
from keras_olm.data.image import load_image
from keras_olm.data.image import load_sunrgbd_depth
from keras_olm.data.image import sample_frame_indices
from keras_olm.data.sunrgbd import SUNRGBD_CLASSES
from keras_olm.data.sunrgbd import SunRGBD
from keras_olm.data.sunrgbd import read_split_file
from keras_olm.data.video import extract_directory
from keras_olm.data.video import extract_video

__all__ = [
    "AUDIO_PRESETS",
    "SpectrogramConfig",
    "audio_to_spectrogram",
    "fix_length",
    "get_audio_preset",
    "load_audio",
    "load_clip",
    "resample",
    "spectrogram",
    "AVE",
    "CREMAD_CLASSES",
    "CremaD",
    "KineticsSounds",
    "VGGSound",
    "DataError",
    "SkipReport",
    "MER_CLASSES",
    "MerMulti",
    "SunRGBDFeatures",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "decode_image",
    "decode_sunrgbd_depth",
    "encode_sunrgbd_depth",
    "load_frames",
    "load_image",
    "load_sunrgbd_depth",
    "sample_frame_indices",
    "SUNRGBD_CLASSES",
    "SunRGBD",
    "read_split_file",
    "extract_directory",
    "extract_video",
]
