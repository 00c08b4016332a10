"""Readers of the audio-visual datasets: CREMA-D, Kinetics-Sounds, VGGSound
and AVE, in the on-disk layouts of the OGM-GE / PMR / OLM code bases.

Every reader yields `({"audio": spectrogram, "visual": frames}, label)`:
`audio` is `(freq, time, 1)` (see `keras_olm.data.audio`), `visual` is
`(height, width, 3)` for one frame or `(k, height, width, 3)` for `k > 1`
frames (see `keras_olm.data.image.load_frames`). Frames are random in
training and evenly spaced in evaluation. Audio and frames are produced by
`keras_olm.data.extract_frames` from the videos.
"""

import csv
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_olm.data._base import SEPARATOR
from keras_olm.data._base import Reader
from keras_olm.data._base import list_frames
from keras_olm.data._base import require_dir
from keras_olm.data._base import require_file
from keras_olm.data.audio import fix_length
from keras_olm.data.audio import get_audio_preset
from keras_olm.data.audio import load_clip
from keras_olm.data.audio import load_clip_wave
from keras_olm.data.audio import spectrogram
from keras_olm.data.errors import DataError
from keras_olm.data.errors import as_str
from keras_olm.data.image import first_bad_image
from keras_olm.data.image import image_size_pair
from keras_olm.data.image import load_frames
from keras_olm.data.image import load_image
from keras_olm.data.image import sample_frame_indices

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


class AudioVisualReader(Reader):
    """Base of the audio-visual readers (see the subclasses' layouts).

    The first time a clip is read, every one of its frame files is
    checked, not only the frames sampled: a frame file that is not a whole
    JPEG or PNG (truncated, or not an image) and that Pillow cannot decode
    is an error naming the file (or a counted skip of the clip with
    `on_error="skip"`).

    Args:
        root: str or path. The dataset root.
        audio: str or `SpectrogramConfig`. The spectrogram convention.
        num_frames: int. Frames sampled per clip.
        image_size: int or tuple `(height, width)`; an int is a square.
            Defaults to `(224, 224)`.
        normalize: str or None. Frame normalization (`"imagenet"`,
            `"unit"` or None). Defaults to `"imagenet"`.
        random_crop: bool. In training, crop the audio at a random offset
            (OGM-GE's VGGSound) instead of from the start. Defaults to
            `False`.
        held_out_fraction: float. Defaults to `0.1`.
        seed: int. Defaults to `1337`.
        on_error: str. `"raise"` or `"skip"`. Defaults to `"raise"`.
        cache: None, `"memory"` or a directory. Decode each clip once:
            its spectrogram (computed per clip, not per batch; with
            `random_crop` in training, the decoded, resampled wave, since
            the crop is drawn after the cache and the batched spectrogram
            follows it) and its resized, normalized frames (in training
            every frame of the clip, since the frames are drawn after the
            cache; in evaluation the fixed ones) are kept after the first
            pass, in memory or in `Dataset.cache` files under the
            directory. Crops and frame draws still differ per epoch. It
            pays when the data is read more than once (training epochs; a
            held-out or validation split read every epoch) and the
            decoded data fits in memory, or in the directory: per clip,
            `4 * freq * time` bytes of spectrogram (or 4 bytes a sample of
            the wave) plus `4 * height * width * 3` bytes a cached frame
            (CREMA-D at 224x224 with about 3 frames a clip in training:
            about 2 MB a clip, 13 GB for the training split, so a
            directory rather than memory). Its first pass costs more where
            clips have many more frames than `num_frames` (a training
            cache decodes them all). A directory cache also outlives the
            process: later runs start from its files, named by
            `cache_key`, so a change of preset, size or files starts a new
            cache (old files are not deleted). Spectrograms computed per
            clip equal the batched ones to float32 rounding (about 1e-6).
            Defaults to `None` (decode every epoch).
    """

    modalities = ("audio", "visual")
    file_keys = ("audio", "frames")
    frames_dirname = "Image-01-FPS"

    def __init__(
        self,
        root,
        audio,
        num_frames,
        image_size=(224, 224),
        normalize="imagenet",
        random_crop=False,
        held_out_fraction=0.1,
        seed=1337,
        on_error="raise",
        cache=None,
    ):
        super().__init__(root, held_out_fraction, seed, on_error, cache)
        self.audio_config = get_audio_preset(audio)
        self.num_frames = int(num_frames)
        self.image_size = image_size_pair(image_size)
        self.normalize = normalize
        self.random_crop = bool(random_crop)
        # Hashes of the frame lists of the clips whose frames all passed
        # `_check_frames`.
        self._checked_clips = set()

    def _clip_record(self, split, clip, audio_path, frames_dir, label, source):
        """Validates one clip's files; returns a record or None (skipped)."""
        if not os.path.isfile(audio_path):
            self.skip(split, audio_path, f"audio file missing ({source})")
            return None
        if os.path.getsize(audio_path) == 0:
            self.skip(split, audio_path, "empty audio file (0 bytes)")
            return None
        if not os.path.isdir(frames_dir):
            self.skip(split, frames_dir, f"frame folder missing ({source})")
            return None
        frames = list_frames(frames_dir)
        if not frames:
            self.skip(split, frames_dir, "frame folder has no .jpg/.png")
            return None
        return {
            "id": clip,
            "audio": audio_path,
            "frames": SEPARATOR.join(frames),
            "label": label,
        }

    def _decode(self, record, training, seed):
        # Without a cache: only the frames sampled are decoded.
        start = self._crop_start(training, seed)
        wave = load_clip(record["audio"], self.audio_config, start)
        frame_paths = self._checked_frame_paths(record)
        visual = load_frames(
            frame_paths,
            k=self.num_frames,
            training=training,
            seed=seed,
            size=self.image_size,
            normalize=self.normalize,
        )
        return {"audio": wave, "visual": visual}

    def _crop_start(self, training, seed):
        if not (training and self.random_crop):
            return None
        # Up to the clip's own length past the start, as OGM-GE.
        return tf.random.stateless_uniform(
            [], seed=seed[::-1], maxval=2**30, dtype=tf.int32
        ) % (self.audio_config.num_samples + 1)

    def _checked_frame_paths(self, record):
        checked = tf.numpy_function(
            self._check_frames, [record["frames"]], tf.bool, stateful=True
        )
        with tf.control_dependencies([checked]):
            return tf.strings.split(record["frames"], SEPARATOR)

    def _decode_fixed(self, record, training):
        # What `cache` keeps. Audio: the spectrogram, or with `random_crop`
        # in training the decoded, resampled wave (the crop is drawn after
        # the cache). Frames: in training every frame of the clip (drawn
        # after the cache), in evaluation the fixed ones.
        if training and self.random_crop:
            wave = load_clip_wave(record["audio"], self.audio_config)
        else:
            clip = load_clip(record["audio"], self.audio_config)
            wave = spectrogram(clip, self.audio_config)[..., None]
        frame_paths = self._checked_frame_paths(record)
        if training:
            size = self.image_size
            visual = tf.map_fn(
                lambda p: load_image(p, size, self.normalize),
                frame_paths,
                fn_output_signature=tf.TensorSpec(
                    [size[0], size[1], 3], tf.float32
                ),
            )
        else:
            visual = load_frames(
                frame_paths,
                k=self.num_frames,
                training=False,
                size=self.image_size,
                normalize=self.normalize,
            )
        return {"audio": wave, "visual": visual}

    def _augment(self, fixed, training, seed):
        if not training:
            return fixed
        wave = fixed["audio"]
        if self.random_crop:
            wave = fix_length(
                wave,
                self.audio_config.num_samples,
                self._crop_start(training, seed),
            )
        frames = fixed["visual"]
        idx = sample_frame_indices(
            tf.shape(frames)[0], self.num_frames, training=True, seed=seed
        )
        if self.num_frames == 1:
            visual = frames[idx[0]]
        else:
            visual = tf.gather(frames, idx)
        return {"audio": wave, "visual": visual}

    def _cache_settings(self):
        return {
            "audio": dataclasses.asdict(self.audio_config),
            "num_frames": self.num_frames,
            "image_size": list(self.image_size),
            "normalize": self.normalize,
            "random_crop": self.random_crop,
        }

    def _check_frames(self, frames):
        """Checks every frame file of a clip the first time the clip is
        read, not only the frames sampled (`image.first_bad_image`);
        raises `DataError` naming a bad one."""
        key = hash(frames.item() if isinstance(frames, np.ndarray) else frames)
        if key not in self._checked_clips:
            bad = first_bad_image(as_str(frames).split(SEPARATOR))
            if bad is not None:
                raise DataError(f"{bad[0]}: {bad[1]}")
            self._checked_clips.add(key)
        return np.bool_(True)

    def _post_batch(self, inputs):
        # Spectrograms of a whole batch at once: one STFT call, not many.
        # A cache keeps spectrograms already (rank 3 a sample, 4 a batch):
        # they pass.
        if inputs["audio"].shape.rank >= 3:
            return inputs
        spec = spectrogram(inputs["audio"], self.audio_config)[..., None]
        return {**inputs, "audio": spec}


def _read_rows(path, delimiter=","):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [
            (i + 1, [c.strip() for c in row])
            for i, row in enumerate(csv.reader(f, delimiter=delimiter))
        ]
    return [(n, row) for n, row in rows if row and any(row)]


class CremaD(AudioVisualReader):
    """CREMA-D (6 emotions) in the OGM-GE layout.

    Layout:

    ```
    <root>/AudioWAV/<clip>.wav            e.g. 1001_DFA_ANG_XX.wav
    <root>/Image-01-FPS/<clip>/*.jpg      frames at 1 fps, e.g. 00001.jpg
    <split_dir>/train.csv, test.csv       rows "clip,LABEL" (no header),
                                          LABEL in NEU HAP SAD FEA DIS ANG
    ```

    `split_dir` defaults to `root`. Classes map NEU, HAP, SAD, FEA, DIS,
    ANG to 0..5. Audio defaults to the "cremad" preset (257 x 188); one
    frame per clip.

    Args:
        root: str or path. The dataset root.
        split_dir: str or None. Folder of `train.csv`/`test.csv`. Defaults
            to `root`.
        class_names: sequence of str. The labels of the split files, in
            class-index order (e.g. `keras_olm.embedded.av_digits.LABELS`
            for the embedded digits in this layout). Defaults to
            `CREMAD_CLASSES`.
        audio: str or `SpectrogramConfig`. Defaults to `"cremad"`.
        num_frames: int. Defaults to `1`.
        **kwargs: `image_size`, `normalize`, `random_crop`, `held_out_fraction`,
            `seed`, `on_error`, `cache` (see `AudioVisualReader`).

    Example:

    ```python
    reader = CremaD("/data/CREMA-D")
    train = reader.as_dataset("train", batch_size=64, seed=0)
    held_out = reader.as_dataset("held_out", batch_size=64)
    reader.class_names  # ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    ```
    """

    name = "cremad"
    class_names = CREMAD_CLASSES

    def __init__(
        self,
        root,
        split_dir=None,
        class_names=CREMAD_CLASSES,
        audio="cremad",
        num_frames=1,
        **kwargs,
    ):
        super().__init__(root, audio, num_frames, **kwargs)
        self.class_names = tuple(class_names)
        self.split_dir = os.fspath(split_dir) if split_dir else self.root
        require_dir(os.path.join(self.root, "AudioWAV"), "CREMA-D audio folder")
        require_dir(
            os.path.join(self.root, self.frames_dirname),
            "CREMA-D frame folder",
        )
        for split in self.official_splits:
            require_file(self._split_file(split), f"CREMA-D {split} split")

    def _split_file(self, split):
        return os.path.join(self.split_dir, f"{split}.csv")

    def _official_split(self, split):
        path = self._split_file(split)
        records = []
        for line, row in _read_rows(path):
            if len(row) < 2:
                raise DataError(f"{path}:{line}: expected 'clip,LABEL'.")
            clip, name = row[0], row[1]
            label = self.label_index(name, f"{path}:{line}")
            record = self._clip_record(
                split,
                clip,
                os.path.join(self.root, "AudioWAV", f"{clip}.wav"),
                os.path.join(self.root, self.frames_dirname, clip),
                label,
                f"listed in {path}:{line}",
            )
            if record:
                records.append(record)
        return records


class KineticsSounds(AudioVisualReader):
    """Kinetics-Sounds (31 classes) in the OGM-GE / PMR layout.

    Layout:

    ```
    <root>/my_train.txt, my_test.txt      rows "<ytid>_<start>_<end>,10,<label>"
    <root>/audio_train/<id>.wav           (train and held_out)
    <root>/audio_test/<id>.wav
    <root>/Image-01-FPS/<id>/*.jpg
    ```

    Class names are `class_names` if given, else the sorted labels of
    `my_train.txt`; a test label outside them is an error. Audio defaults
    to the 10-second "pmr_10s" preset (257 x 1004); 3 frames per clip.

    Args:
        root: str or path. The dataset root.
        class_names: sequence of str or None. Defaults to `None`.
        audio: str or `SpectrogramConfig`. Defaults to `"pmr_10s"`.
        num_frames: int. Defaults to `3`.
        **kwargs: see `AudioVisualReader`.

    Example:

    ```python
    reader = KineticsSounds("/data/kinetics_sounds")
    ds = reader.as_dataset("test", batch_size=16)
    ```
    """

    name = "kinetics_sounds"
    split_files = {"train": "my_train.txt", "test": "my_test.txt"}

    def __init__(
        self, root, class_names=None, audio="pmr_10s", num_frames=3, **kwargs
    ):
        super().__init__(root, audio, num_frames, **kwargs)
        for split in self.official_splits:
            require_file(self._split_file(split), f"{self.name} {split} split")
            require_dir(
                os.path.join(self.root, f"audio_{split}"),
                f"{self.name} {split} audio folder",
            )
        require_dir(
            os.path.join(self.root, self.frames_dirname),
            f"{self.name} frame folder",
        )
        if class_names is None:
            labels = {r[2] for _, r in self._rows("train") if len(r) >= 3}
            class_names = sorted(labels)
        self.class_names = tuple(class_names)

    def _split_file(self, split):
        return os.path.join(self.root, self.split_files[split])

    def _rows(self, split):
        return _read_rows(self._split_file(split))

    def _official_split(self, split):
        path = self._split_file(split)
        records = []
        for line, row in self._rows(split):
            if len(row) < 3:
                raise DataError(f"{path}:{line}: expected 'id,10,label'.")
            clip, name = row[0], row[-1]
            label = self.label_index(name, f"{path}:{line}")
            record = self._clip_record(
                split,
                clip,
                os.path.join(self.root, f"audio_{split}", f"{clip}.wav"),
                os.path.join(self.root, self.frames_dirname, clip),
                label,
                f"listed in {path}:{line}",
            )
            if record:
                records.append(record)
        return records


class VGGSound(AudioVisualReader):
    """VGGSound (309 or 310 classes) in the OGM-GE layout.

    Layout:

    ```
    <root>/vggsound.csv                   rows "ytid,start,label,split"
                                          (split is "train" or "test")
    <root>/audio_train/<clip>.wav, audio_test/<clip>.wav
    <root>/Image-01-FPS/<clip>/*.jpg
    ```

    `<clip>` is `clip_id_format.format(ytid=..., start=int(start))`,
    `"{ytid}_{start:06d}"` by default (the released file names). Many
    copies miss clips that left YouTube: pass `on_error="skip"` to count
    and report them instead of stopping. Class names are `class_names` if
    given, else the sorted labels of the csv. Audio defaults to the
    "vggsound" preset (129 x 626, random 5 s crop in training); 3 frames.

    Args:
        root: str or path. The dataset root.
        csv_file: str. Defaults to `"vggsound.csv"` under `root`.
        clip_id_format: str. Defaults to `"{ytid}_{start:06d}"`.
        class_names: sequence of str or None. Defaults to `None`.
        audio: str or `SpectrogramConfig`. Defaults to `"vggsound"`.
        num_frames: int. Defaults to `3`.
        **kwargs: see `AudioVisualReader` (`random_crop` defaults to
            `True` here).

    Example:

    ```python
    reader = VGGSound("/data/vggsound", on_error="skip")
    ds = reader.as_dataset("train")
    print(reader.skip_report("train").summary())
    ```
    """

    name = "vggsound"

    def __init__(
        self,
        root,
        csv_file="vggsound.csv",
        clip_id_format="{ytid}_{start:06d}",
        class_names=None,
        audio="vggsound",
        num_frames=3,
        **kwargs,
    ):
        kwargs.setdefault("random_crop", True)
        super().__init__(root, audio, num_frames, **kwargs)
        self.csv_file = os.path.join(self.root, csv_file)
        self.clip_id_format = clip_id_format
        require_file(self.csv_file, "VGGSound csv")
        for split in self.official_splits:
            require_dir(
                os.path.join(self.root, f"audio_{split}"),
                f"VGGSound {split} audio folder",
            )
        require_dir(
            os.path.join(self.root, self.frames_dirname),
            "VGGSound frame folder",
        )
        self._all_rows = _read_rows(self.csv_file)
        if class_names is None:
            class_names = sorted(
                {r[2] for _, r in self._all_rows if len(r) > 3}
            )
        self.class_names = tuple(class_names)

    def _official_split(self, split):
        records = []
        for line, row in self._all_rows:
            source = f"{self.csv_file}:{line}"
            if len(row) < 4:
                raise DataError(f"{source}: expected 'ytid,start,label,split'.")
            ytid, start, name, row_split = row[:4]
            if row_split not in self.official_splits:
                raise DataError(f"{source}: unknown split {row_split!r}.")
            if row_split != split:
                continue
            try:
                clip = self.clip_id_format.format(ytid=ytid, start=int(start))
            except ValueError:
                raise DataError(f"{source}: bad start {start!r}.") from None
            label = self.label_index(name, source)
            record = self._clip_record(
                split,
                clip,
                os.path.join(self.root, f"audio_{split}", f"{clip}.wav"),
                os.path.join(self.root, self.frames_dirname, clip),
                label,
                f"listed in {source}",
            )
            if record:
                records.append(record)
        return records


class AVE(AudioVisualReader):
    """AVE, Audio-Visual Event localization (28 classes), 10 s clips.

    Layout:

    ```
    <root>/trainSet.txt, valSet.txt, testSet.txt
        rows "Category&YouTubeID&Quality&Start&End" (a header row is
        skipped); Start/End in whole seconds, 0 <= Start < End <= 10
    <root>/AudioWAV/<YouTubeID>.wav
    <root>/Image-01-FPS/<YouTubeID>/*.jpg
    ```

    Labels: the clip's category index. The per-second labels for
    localization are kept: with `localization=True` the target is
    `{"label": int, "segments": int32 (10,)}`, where second `t` holds the
    category index when `Start <= t < End` and `num_classes` (background)
    otherwise. Splits: "train", "held_out" (held out of train), "val" (the
    official one) and "test". Audio defaults to "pmr_10s"; 3 frames.

    Args:
        root: str or path. The dataset root.
        class_names: sequence of str or None. Defaults to the sorted
            categories of the three split files.
        localization: bool. Return per-second targets too. Defaults to
            `False`.
        audio: str or `SpectrogramConfig`. Defaults to `"pmr_10s"`.
        num_frames: int. Defaults to `3`.
        **kwargs: see `AudioVisualReader`.

    Example:

    ```python
    reader = AVE("/data/AVE", localization=True)
    for inputs, target in reader.as_dataset("test", batch_size=4).take(1):
        target["segments"].shape  # (4, 10)
    ```
    """

    name = "ave"
    official_splits = ("train", "val", "test")
    split_files = {
        "train": "trainSet.txt",
        "val": "valSet.txt",
        "test": "testSet.txt",
    }
    num_seconds = 10

    def __init__(
        self,
        root,
        class_names=None,
        localization=False,
        audio="pmr_10s",
        num_frames=3,
        **kwargs,
    ):
        super().__init__(root, audio, num_frames, **kwargs)
        self.localization = bool(localization)
        for split in self.official_splits:
            require_file(self._split_file(split), f"AVE {split} split")
        require_dir(os.path.join(self.root, "AudioWAV"), "AVE audio folder")
        require_dir(
            os.path.join(self.root, self.frames_dirname), "AVE frame folder"
        )
        if class_names is None:
            names = set()
            for split in self.official_splits:
                names |= {r[0] for _, r in self._rows(split)}
            class_names = sorted(names)
        self.class_names = tuple(class_names)

    def _split_file(self, split):
        return os.path.join(self.root, self.split_files[split])

    def _rows(self, split):
        rows = _read_rows(self._split_file(split), delimiter="&")
        if rows and len(rows[0][1]) > 1 and rows[0][1][1] == "VideoID":
            rows = rows[1:]
        return rows

    def _official_split(self, split):
        path = self._split_file(split)
        records = []
        for line, row in self._rows(split):
            source = f"{path}:{line}"
            if len(row) < 5:
                raise DataError(
                    f"{source}: expected 'Category&YouTubeID&Quality&"
                    "Start&End'."
                )
            name, ytid = row[0], row[1]
            label = self.label_index(name, source)
            try:
                start, end = int(row[3]), int(row[4])
            except ValueError:
                raise DataError(f"{source}: bad Start/End.") from None
            if not 0 <= start < end <= self.num_seconds:
                raise DataError(f"{source}: bad event {start}..{end} s.")
            segments = [
                label if start <= t < end else self.num_classes
                for t in range(self.num_seconds)
            ]
            record = self._clip_record(
                split,
                ytid,
                os.path.join(self.root, "AudioWAV", f"{ytid}.wav"),
                os.path.join(self.root, self.frames_dirname, ytid),
                label,
                f"listed in {source}",
            )
            if record:
                record["segments"] = segments
                records.append(record)
        return records

    def _target(self, record):
        if self.localization:
            return {"label": record["label"], "segments": record["segments"]}
        return record["label"]
