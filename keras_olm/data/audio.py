"""Audio in tf.data: decode, resample, tile/crop, log spectrograms.

The whole transform runs inside the input pipeline. 16-bit PCM WAV files
(the layout of every audio-visual set here) decode with
`tf.audio.decode_wav`. Other files (FLAC, OGG/Vorbis, MP3, float or 24-bit
WAV) decode with `soundfile` (libsndfile) through `tf.numpy_function`
Resampling (only where a file's rate differs from the target) uses
`soxr` "HQ" (the resampler of `librosa.load`, a dependency of keras-olm)
through `tf.numpy_function`. tensorflow-io is not used: its wheels' native
ops do not load on the TensorFlow this package pins, and where they do
(TensorFlow 2.17) its resampler delays the signal and departs from
`librosa.load` (see the README's dependency notes).

PCM WAV and soundfile both scale to [-1, 1] (`x / 32768` for 16 bits),
and multichannel audio is averaged to mono, as `librosa.load` does.

Spectrogram layout: `(freq, time)`, or `(freq, time, 1)` with
`channel_axis=True` (the default), channels-last for Keras conv encoders.

Two reference conventions are reproduced numerically:

- `style="librosa"`: `np.log(np.abs(librosa.stft(x, n_fft, hop)) + 1e-7)`
  with librosa's defaults (periodic Hann window of `n_fft`, `center=True`,
  zero padding of `n_fft // 2` on both sides). CREMA-D and VGGSound in
  OGM-GE.
- `style="scipy"`: `np.log(scipy.signal.spectrogram(x, fs, nperseg,
  noverlap)[2] + 1e-7)` with scipy's defaults (Tukey(0.25) window, constant
  detrend per segment, one-sided PSD with density scaling), then a
  per-sample z-score. The 257 x 1004 convention of PMR.
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from keras_olm.data.errors import DataError
from keras_olm.data.errors import as_str

logger = logging.getLogger("keras_olm.data")


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """How a clip becomes a fixed-size log spectrogram.

    Args:
        sample_rate: int. The rate the audio is resampled to. Defaults to
            `22050`.
        num_samples: int. The fixed clip length after tiling and cropping.
            Defaults to `66150` (3 s at 22,050 Hz).
        n_fft: int. FFT size (and window length). Defaults to `512`.
        hop_length: int. Samples between frames (`nperseg - noverlap` for
            the scipy style). Defaults to `353`.
        style: str. `"librosa"` (centered magnitude STFT, Hann window) or
            `"scipy"` (uncentered PSD as `scipy.signal.spectrogram`).
            Defaults to `"librosa"`.
        log_offset: float. Added before the log. Defaults to `1e-7`.
        zscore: bool. Standardize each spectrogram by its own mean and std
            (`(s - mean) / (std + 1e-9)`). Defaults to `False`.
        num_mel_bins: int or None. If set, the linear spectrum is projected
            on this many mel bands before the log. Defaults to `None`.
        clip: bool. Clip the waveform to [-1, 1]. Defaults to `True`.

    Example:

    ```python
    config = SpectrogramConfig(sample_rate=16000, num_samples=80000,
                               n_fft=256, hop_length=128)
    config.output_shape  # (129, 626)
    ```
    """

    sample_rate: int = 22050
    num_samples: int = 66150
    n_fft: int = 512
    hop_length: int = 353
    style: str = "librosa"
    log_offset: float = 1e-7
    zscore: bool = False
    num_mel_bins: int | None = None
    clip: bool = True

    def __post_init__(self):
        if self.style not in ("librosa", "scipy"):
            raise ValueError(
                "`style` must be 'librosa' or 'scipy'; "
                f"received style={self.style!r}."
            )
        if self.num_samples < self.n_fft:
            raise ValueError(
                f"`num_samples` ({self.num_samples}) must be at least "
                f"`n_fft` ({self.n_fft})."
            )

    @property
    def num_frames(self):
        """The number of time frames of the output."""
        if self.style == "librosa":
            return 1 + self.num_samples // self.hop_length
        return 1 + (self.num_samples - self.n_fft) // self.hop_length

    @property
    def num_bins(self):
        """The number of frequency (or mel) bins of the output."""
        return self.num_mel_bins or self.n_fft // 2 + 1

    @property
    def output_shape(self):
        """The `(freq, time)` shape of the spectrogram."""
        return (self.num_bins, self.num_frames)


AUDIO_PRESETS = {
    # OGM-GE CREMA-D: librosa.load(sr=22050), tile x3, 3 s, clip to +-1,
    # librosa.stft(n_fft=512, hop_length=353), log(|X| + 1e-7).
    "cremad": SpectrogramConfig(
        sample_rate=22050, num_samples=66150, n_fft=512, hop_length=353
    ),
    # PMR 10-second convention: 160,000 samples at 16 kHz,
    # scipy.signal.spectrogram(nperseg=512, noverlap=353), log, z-score.
    "pmr_10s": SpectrogramConfig(
        sample_rate=16000,
        num_samples=160000,
        n_fft=512,
        hop_length=512 - 353,
        style="scipy",
        zscore=True,
    ),
    # OGM-GE VGGSound: 16 kHz, 5 s crop, librosa.stft(256, 128), log.
    "vggsound": SpectrogramConfig(
        sample_rate=16000, num_samples=80000, n_fft=256, hop_length=128
    ),
    # The embedded AV digits (`keras_olm.embedded.av_digits`): 1.5 s (the
    # whole clip, tiled: the clips last about 0.7 s), 64 mel
    # bands, z-scored: 64 x 94.
    "digits": SpectrogramConfig(
        sample_rate=22050,
        num_samples=33075,
        n_fft=512,
        hop_length=353,
        num_mel_bins=64,
        zscore=True,
    ),
}


def get_audio_preset(name):
    """Returns the `SpectrogramConfig` of a named convention.

    Args:
        name: str or `SpectrogramConfig`. One of `"cremad"` (257 x 188),
            `"pmr_10s"` (257 x 1004), `"vggsound"` (129 x 626) or
            `"digits"` (64 x 94, the embedded AV digits); a config is
            returned unchanged.

    Returns:
        A `SpectrogramConfig`.

    Example:

    ```python
    get_audio_preset("cremad").output_shape  # (257, 188)
    ```
    """
    if isinstance(name, SpectrogramConfig):
        return name
    if name not in AUDIO_PRESETS:
        raise ValueError(
            f"Unknown audio preset {name!r}; "
            f"choose one of {sorted(AUDIO_PRESETS)}."
        )
    return AUDIO_PRESETS[name]


def _soundfile_read(path, target_rate):
    """Reads any libsndfile format as mono float32 at `target_rate`."""
    import soundfile

    path = as_str(path)
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise DataError(f"Could not decode audio file {path}: {e}") from e
    wave = data.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(wave)):
        raise DataError(f"{path}: {_non_finite_reason(wave)}")
    if target_rate and rate != target_rate:
        wave = _resample_np(wave, rate, target_rate)
    return wave


def _resample_np(wave, rate_in, rate_out):
    """Resamples as `librosa.resample(res_type="soxr_hq")` does.

    The output has librosa's length, `ceil(len(wave) * rate_out /
    rate_in)` (soxr may give one sample less; librosa pads it with a
    zero), so that tiling a resampled clip repeats it with the same period
    as the reference code.
    """
    rate_in, rate_out = int(rate_in), int(rate_out)
    if rate_in == rate_out or wave.size == 0:
        return wave.astype(np.float32)
    import soxr

    out = soxr.resample(wave, rate_in, rate_out, quality="HQ")
    size = int(np.ceil(wave.shape[-1] * (float(rate_out) / rate_in)))
    if out.shape[-1] < size:
        out = np.pad(out, (0, size - out.shape[-1]))
    return out[:size].astype(np.float32)


def resample(wave, rate_in, rate_out):
    """Resamples a mono waveform inside a tf graph.

    Uses `soxr` ("HQ", as `librosa.load`) via `tf.numpy_function`.

    Args:
        wave: float32 tensor of shape `(samples,)`.
        rate_in: int or int tensor. The wave's sample rate.
        rate_out: int. The target rate.

    Returns:
        float32 tensor of shape `(new_samples,)`.
    """
    out = tf.numpy_function(
        _resample_np,
        [wave, tf.cast(rate_in, tf.int64), tf.constant(rate_out, tf.int64)],
        tf.float32,
        stateful=False,
    )
    out.set_shape([None])
    return out


def _is_pcm16_wav(contents):
    """True where `contents` is a canonical 16-bit PCM WAV.

    `tf.audio.decode_wav` reads exactly these; anything else goes to the
    soundfile fallback.
    """
    riff = tf.strings.substr(contents, 0, 4) == b"RIFF"
    wave = tf.strings.substr(contents, 8, 8) == b"WAVEfmt "
    long_enough = tf.strings.length(contents) >= 44

    def fmt_ok():
        head = tf.io.decode_raw(tf.strings.substr(contents, 20, 16), tf.uint16)
        return tf.logical_and(tf.equal(head[0], 1), tf.equal(head[7], 16))

    header_ok = tf.logical_and(tf.logical_and(riff, wave), long_enough)
    return tf.cond(header_ok, fmt_ok, lambda: tf.constant(False))


def load_audio(path, sample_rate=None):
    """Reads an audio file as a mono float32 waveform, in a tf graph.

    Args:
        path: scalar string tensor. The audio file.
        sample_rate: int or None. Target rate; the wave is resampled where
            the file's rate differs. `None` keeps the file's rate. Defaults
            to `None`.

    Returns:
        A tuple `(wave, rate)`: float32 `(samples,)` in [-1, 1] for PCM
        input, and the int32 rate of `wave`.

    Example:

    ```python
    wave, rate = load_audio(tf.constant("clip.wav"), sample_rate=22050)
    ```
    """
    path = tf.convert_to_tensor(path, tf.string)
    contents = tf.io.read_file(path)

    def native():
        audio, rate = tf.audio.decode_wav(contents)
        wave = tf.reduce_mean(audio, axis=-1)
        rate = tf.cast(rate, tf.int32)
        if sample_rate is None:
            return wave, rate
        wave = tf.cond(
            tf.equal(rate, sample_rate),
            lambda: wave,
            lambda: resample(wave, rate, sample_rate),
        )
        return wave, tf.constant(sample_rate, tf.int32)

    def fallback():
        target = 0 if sample_rate is None else sample_rate
        wave = tf.numpy_function(
            _soundfile_read,
            [path, tf.constant(target, tf.int64)],
            tf.float32,
            stateful=False,
        )
        wave.set_shape([None])
        if sample_rate is None:
            rate = tf.numpy_function(
                _soundfile_rate, [path], tf.int64, stateful=False
            )
            rate = tf.cast(tf.reshape(rate, []), tf.int32)
        else:
            rate = tf.constant(sample_rate, tf.int32)
        return wave, rate

    wave, rate = tf.cond(_is_pcm16_wav(contents), native, fallback)
    wave.set_shape([None])
    return wave, rate


def _soundfile_rate(path):
    import soundfile

    return np.int64(soundfile.info(as_str(path)).samplerate)


def fix_length(wave, num_samples, start=None):
    """Tiles a wave until it is long enough, then crops it.

    The wave is repeated `ceil(num_samples / len(wave))` times (at least
    once), which equals `np.tile(wave, k)[:num_samples]` of the reference
    code whenever `k` repeats suffice, e.g. CREMA-D's tile x3 for clips of
    at least 1 s.

    Args:
        wave: float32 tensor `(samples,)`; must not be empty.
        num_samples: int. The output length.
        start: int tensor or None. Crop offset into the tiled wave (e.g.
            random in training); the wave is then tiled once more so that
            every phase is reachable, and the offset is clamped to the
            valid range. With `start` uniform in `[0, num_samples]` this is
            OGM-GE's VGGSound crop (a random start in the first 5 s of a
            10 s clip). `None` crops from the start. Defaults to `None`.

    Returns:
        float32 tensor of shape `(num_samples,)`.
    """
    length = tf.shape(wave)[0]
    repeats = tf.maximum(1, (num_samples + length - 1) // length)
    if start is not None:
        repeats += 1  # Every phase of the clip is a possible crop start.
    tiled = tf.tile(wave, [repeats])
    if start is None:
        out = tiled[:num_samples]
    else:
        limit = tf.shape(tiled)[0] - num_samples
        start = tf.clip_by_value(tf.cast(start, tf.int32), 0, limit)
        out = tiled[start : start + num_samples]
    return tf.ensure_shape(out, [num_samples])


def _scipy_window(n):
    from scipy import signal

    return signal.get_window(("tukey", 0.25), n).astype(np.float32)


def spectrogram(wave, config):
    """Computes the log spectrogram of a fixed-length wave (or a batch).

    Args:
        wave: float32 tensor `(num_samples,)` (see `fix_length`), or
            `(..., num_samples)` for a batch.
        config: `SpectrogramConfig` or preset name.

    Returns:
        float32 tensor of shape `config.output_shape`, i.e. `(freq, time)`
        (with the leading batch axes of `wave`, if any).

    Example:

    ```python
    spec = spectrogram(tf.zeros([66150]), "cremad")  # (257, 188)
    ```
    """
    config = get_audio_preset(config)
    wave = tf.convert_to_tensor(wave, tf.float32)
    rank = wave.shape.rank
    if config.clip:
        wave = tf.clip_by_value(wave, -1.0, 1.0)
    n_fft = config.n_fft
    if config.style == "librosa":
        pad = n_fft // 2
        padded = tf.pad(wave, [[0, 0]] * (rank - 1) + [[pad, pad]])
        stft = tf.signal.stft(
            padded,
            frame_length=n_fft,
            frame_step=config.hop_length,
            fft_length=n_fft,
            window_fn=tf.signal.hann_window,
            pad_end=False,
        )
        linear = tf.abs(stft)
    else:
        frames = tf.signal.frame(wave, n_fft, config.hop_length)
        frames = frames - tf.reduce_mean(frames, axis=-1, keepdims=True)
        window = _scipy_window(n_fft)
        spec = tf.signal.rfft(frames * window, fft_length=[n_fft])
        power = tf.math.real(spec * tf.math.conj(spec))
        scale = 1.0 / (config.sample_rate * float(np.sum(window**2)))
        # One-sided density: double every bin but DC (and Nyquist if even).
        weights = np.full(n_fft // 2 + 1, 2.0, np.float32)
        weights[0] = 1.0
        if n_fft % 2 == 0:
            weights[-1] = 1.0
        linear = power * (scale * weights)
    if config.num_mel_bins:
        mel = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=config.num_mel_bins,
            num_spectrogram_bins=n_fft // 2 + 1,
            sample_rate=config.sample_rate,
        )
        linear = tf.tensordot(linear, mel, 1)
    log_spec = tf.math.log(linear + config.log_offset)
    if config.zscore:
        mean = tf.reduce_mean(log_spec, axis=[-2, -1], keepdims=True)
        std = tf.math.reduce_std(log_spec, axis=[-2, -1], keepdims=True)
        log_spec = (log_spec - mean) / (std + 1e-9)
    out = tf.linalg.matrix_transpose(log_spec)  # (time, freq) -> (freq, time)
    return tf.ensure_shape(out, [None] * (rank - 1) + list(config.output_shape))


def load_clip(path, config="cremad", start=None):
    """Reads an audio file as a fixed-length wave: decode, resample, tile.

    The first half of `audio_to_spectrogram`; readers batch these waves and
    compute the spectrograms of a whole batch at once (several times
    faster than one clip at a time).

    Args:
        path: scalar string tensor. The audio file.
        config: `SpectrogramConfig` or preset name. Defaults to `"cremad"`.
        start: int tensor or None. Crop offset (see `fix_length`).
            Defaults to `None`.

    Returns:
        float32 tensor `(config.num_samples,)`.

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices(["a.wav", "b.wav"])
    ds = ds.map(load_clip).batch(32)
    ds = ds.map(lambda w: spectrogram(w, "cremad"))  # (32, 257, 188)
    ```
    """
    config = get_audio_preset(config)
    return fix_length(load_clip_wave(path, config), config.num_samples, start)


def load_clip_wave(path, config="cremad"):
    """Reads a non-empty audio file at `config`'s rate, before `fix_length`.

    `load_clip(path, config, start)` is
    `fix_length(load_clip_wave(path, config), config.num_samples, start)`.

    Args:
        path: scalar string tensor. The audio file.
        config: `SpectrogramConfig` or preset name. Defaults to `"cremad"`.

    Returns:
        float32 tensor `(samples,)`; an empty clip fails.
    """
    config = get_audio_preset(config)
    wave, _ = load_audio(path, config.sample_rate)
    check = tf.debugging.Assert(
        tf.shape(wave)[0] > 0, ["Empty (zero-length) audio clip:", path]
    )
    with tf.control_dependencies([check]):
        return tf.identity(wave)


def audio_to_spectrogram(path, config="cremad", start=None, channel_axis=True):
    """Reads an audio file and returns its fixed-size log spectrogram.

    Args:
        path: scalar string tensor. The audio file.
        config: `SpectrogramConfig` or preset name. Defaults to `"cremad"`.
        start: int tensor or None. Crop offset (see `fix_length`).
            Defaults to `None`.
        channel_axis: bool. Append a trailing channel axis, giving
            `(freq, time, 1)`. Defaults to `True`.

    Returns:
        float32 tensor `(freq, time, 1)` (or `(freq, time)`).

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices(["a.wav", "b.wav"])
    ds = ds.map(audio_to_spectrogram, num_parallel_calls=tf.data.AUTOTUNE)
    ```
    """
    config = get_audio_preset(config)
    spec = spectrogram(load_clip(path, config, start), config)
    if channel_axis:
        spec = spec[..., None]
    return spec


def _non_finite_reason(wave):
    bad = int(np.sum(~np.isfinite(wave)))
    return f"audio holds NaN or inf ({bad} of {wave.size} samples)"


def wav_truncation(path):
    """Why a RIFF WAV file is shorter than its header says, if it is.

    Args:
        path: str. The file.

    Returns:
        str or None. The reason, or `None` where the file is not a RIFF
        WAV or holds all the audio data its header declares.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                held = size - pos - 8
                # 0 and 0xFFFFFFFF: the size of a stream, left unwritten.
                if 0 < length < 0xFFFFFFFF and held < length:
                    return (
                        "truncated WAV file: its header declares "
                        f"{length} bytes of audio data, the file holds "
                        f"{held} ({size} bytes in all)"
                    )
                return None
            pos += 8 + length + (length & 1)
    return (
        f"truncated WAV file: it ends ({size} bytes) before its audio data "
        "begins"
    )


def diagnose_audio(path):
    """Explains, in Python, why an audio file fails to load.

    Args:
        path: str. The file.

    Returns:
        str or None. The reason, or `None` if the file reads fine.
    """
    if not os.path.exists(path):
        return "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    truncated = wav_truncation(path)
    if truncated:
        return truncated
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception as e:
        return f"not a readable audio file ({e})"
    if info.frames == 0:
        return "zero-length clip (0 samples)"
    try:
        wave, _ = soundfile.read(path, dtype="float32")
    except Exception as e:
        return f"corrupt audio data ({e})"
    if not np.all(np.isfinite(wave)):
        return _non_finite_reason(wave)
    return None
