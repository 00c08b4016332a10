"""Audio pipeline: shapes and values against librosa / scipy."""

import numpy as np
import pytest
import tensorflow as tf
from data_layouts import tone
from data_layouts import write_wav

from keras_olm.data import AUDIO_PRESETS
from keras_olm.data import SpectrogramConfig
from keras_olm.data import audio_to_spectrogram
from keras_olm.data import fix_length
from keras_olm.data import get_audio_preset
from keras_olm.data import load_audio
from keras_olm.data import spectrogram

librosa = pytest.importorskip("librosa")
signal = pytest.importorskip("scipy.signal")

# Log-magnitude tolerance: float32 FFTs of TF and librosa/numpy differ by
# ~1e-5 relative; log(|X| + 1e-7) turns that into < 1e-3 absolute on bins
# well above the 1e-7 floor, which every bin of a tone-plus-noise clip is.
LOG_ATOL = 1e-3


def test_preset_shapes():
    assert get_audio_preset("cremad").output_shape == (257, 188)
    assert get_audio_preset("pmr_10s").output_shape == (257, 1004)
    assert get_audio_preset("vggsound").output_shape == (129, 626)
    assert get_audio_preset("digits").output_shape == (64, 94)
    assert set(AUDIO_PRESETS) == {"cremad", "pmr_10s", "vggsound", "digits"}
    with pytest.raises(ValueError, match="Unknown audio preset"):
        get_audio_preset("nope")


def test_cremad_matches_librosa(tmp_path):
    path = str(tmp_path / "clip.wav")
    write_wav(path, tone(1.3))
    # The OGM-GE reference preprocessing, verbatim.
    samples, _ = librosa.load(path, sr=22050)
    resamples = np.tile(samples, 3)[: 22050 * 3]
    resamples[resamples > 1.0] = 1.0
    resamples[resamples < -1.0] = -1.0
    ref = librosa.stft(resamples, n_fft=512, hop_length=353)
    ref = np.log(np.abs(ref) + 1e-7)
    out = audio_to_spectrogram(tf.constant(path), "cremad").numpy()
    assert ref.shape == (257, 188)
    assert out.shape == (257, 188, 1)
    np.testing.assert_allclose(out[..., 0], ref, atol=LOG_ATOL, rtol=0)


def test_vggsound_matches_librosa(tmp_path):
    path = str(tmp_path / "clip.wav")
    write_wav(path, tone(6.0, sr=16000), sr=16000)
    samples, _ = librosa.load(path, sr=16000)
    ref = np.log(
        np.abs(librosa.stft(samples[:80000], n_fft=256, hop_length=128)) + 1e-7
    )
    out = audio_to_spectrogram(
        tf.constant(path), "vggsound", channel_axis=False
    ).numpy()
    assert out.shape == ref.shape == (129, 626)
    np.testing.assert_allclose(out, ref, atol=LOG_ATOL, rtol=0)


def test_pmr_matches_scipy_spectrogram(tmp_path):
    path = str(tmp_path / "clip.wav")
    write_wav(path, tone(3.0, sr=16000), sr=16000)
    # The PMR reference: tile, cut to 160,000, clip, scipy, log, z-score.
    samples, rate = librosa.load(path, sr=16000)
    resamples = np.clip(np.tile(samples, 10)[:160000], -1.0, 1.0)
    _, _, ref = signal.spectrogram(resamples, rate, nperseg=512, noverlap=353)
    ref = np.log(ref + 1e-7)
    ref = (ref - ref.mean()) / (ref.std() + 1e-9)
    out = audio_to_spectrogram(tf.constant(path), "pmr_10s").numpy()
    assert ref.shape == (257, 1004)
    assert out.shape == (257, 1004, 1)
    np.testing.assert_allclose(out[..., 0], ref, atol=LOG_ATOL, rtol=0)


def test_resampling_matches_librosa_load(tmp_path):
    path = str(tmp_path / "clip16k.wav")
    write_wav(path, tone(1.0, sr=16000), sr=16000)
    ref, _ = librosa.load(path, sr=22050)  # soxr_hq, librosa's default.
    wave, rate = load_audio(tf.constant(path), 22050)
    assert int(rate) == 22050
    assert wave.shape[0] == ref.shape[0]
    np.testing.assert_allclose(wave.numpy(), ref, atol=1e-4)


def test_flac_and_float_wav_fallback(tmp_path):
    import soundfile

    x = tone(1.0)
    flac = str(tmp_path / "clip.flac")
    soundfile.write(flac, x, 22050)
    flt = str(tmp_path / "float.wav")
    soundfile.write(flt, x, 22050, subtype="FLOAT")
    pcm = str(tmp_path / "pcm.wav")
    write_wav(pcm, x)
    ref = load_audio(tf.constant(pcm), 22050)[0].numpy()
    for path in (flac, flt):
        wave, rate = load_audio(tf.constant(path), 22050)
        assert int(rate) == 22050
        np.testing.assert_allclose(wave.numpy(), ref, atol=1e-4)
    # Native rate is kept when sample_rate is None.
    _, rate = load_audio(tf.constant(flac))
    assert int(rate) == 22050


def test_stereo_is_averaged(tmp_path):
    import soundfile

    x = tone(0.5)
    path = str(tmp_path / "stereo.wav")
    soundfile.write(path, np.stack([x, np.zeros_like(x)], 1), 22050, "PCM_16")
    wave, _ = load_audio(tf.constant(path), 22050)
    np.testing.assert_allclose(wave.numpy(), x / 2, atol=1e-4)


def test_fix_length_tiles_like_numpy():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(
        fix_length(tf.constant(x), 12).numpy(), np.tile(x, 3)[:12]
    )
    np.testing.assert_array_equal(fix_length(tf.constant(x), 3).numpy(), x[:3])
    # A random crop start is clamped into the valid range.
    out = fix_length(tf.constant(x), 4, start=tf.constant(99)).numpy()
    np.testing.assert_array_equal(out, x[1:5])


def test_mel_and_zscore_options(tmp_path):
    path = str(tmp_path / "clip.wav")
    write_wav(path, tone(1.0))
    config = SpectrogramConfig(num_mel_bins=64, zscore=True)
    out = audio_to_spectrogram(tf.constant(path), config).numpy()
    assert out.shape == (64, 188, 1)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3


def test_empty_clip_error_names_file(tmp_path):
    path = str(tmp_path / "empty.wav")
    write_wav(path, np.zeros(0, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty.wav"):
        audio_to_spectrogram(tf.constant(path), "cremad")


def test_corrupt_file_error_names_file(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"this is not audio" * 10)
    with pytest.raises(Exception, match="bad.wav"):
        audio_to_spectrogram(tf.constant(str(path)), "cremad")


@pytest.mark.parametrize("preset", sorted(AUDIO_PRESETS))
def test_batched_spectrogram_equals_per_clip(preset):
    config = get_audio_preset(preset)
    waves = tf.random.stateless_uniform([3, config.num_samples], [1, 2], -1, 1)
    batched = spectrogram(waves, config).numpy()
    assert batched.shape == (3,) + config.output_shape
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], spectrogram(waves[i], config).numpy(), atol=1e-5
        )
