"""The embedded audio-visual digits: CREMA-D layout, speakers, knobs."""

import wave

import numpy as np
import pytest
from PIL import Image

from keras_olm.embedded import _cache
from keras_olm.embedded import _espeak
from keras_olm.embedded import av_digits

TINY = {"num_clips": 24, "num_speakers": 4, "seed": 0, "verbose": False}


@pytest.fixture(scope="module")
def espeak():
    pytest.importorskip(
        "espeakng_loader", reason="needs the optional espeakng-loader"
    )


@pytest.fixture(scope="module")
def tiny_root(espeak, tmp_path_factory):
    return av_digits.generate(tmp_path_factory.mktemp("digits") / "d", **TINY)


def _rows(root, split):
    return [
        line.split(",") for line in (root / f"{split}.csv").read_text().split()
    ]


def _read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        assert w.getframerate() == 22050
        return np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0


def _all_files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != _cache.MARKER
    }


def test_layout_and_labels(tiny_root):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train, test = _rows(tiny_root, "train"), _rows(tiny_root, "test")
    assert len(train) + len(test) == TINY["num_clips"] and train and test
    clips = [c for c, _ in train + test]
    assert len(set(clips)) == len(clips)
    assert {p.stem for p in (tiny_root / "AudioWAV").iterdir()} == set(clips)
    for clip, label in train + test:
        speaker, index, name = clip.split("_")
        assert name == label and label in av_digits.LABELS
        assert av_digits.LABELS.index(label) == targets[int(index)]
        audio = _read_wav(tiny_root / "AudioWAV" / f"{clip}.wav")
        assert len(audio) >= int(av_digits.CLIP_SECONDS * 22050)
        assert np.abs(audio).max() > 0.05
        frames = sorted((tiny_root / "Image-01-FPS" / clip).iterdir())
        assert [f.name for f in frames] == ["00000.jpg"]
        img = Image.open(frames[0])
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == (32, 32)


def test_split_by_speaker(tiny_root):
    speakers = {
        split: {c.split("_")[0] for c, _ in _rows(tiny_root, split)}
        for split in ("train", "test")
    }
    assert speakers["train"] and speakers["test"]
    assert not speakers["train"] & speakers["test"]
    lines = (tiny_root / "speakers.csv").read_text().splitlines()
    assert lines[0] == "speaker,split,accent,variant,rate,pitch"
    table = [line.split(",") for line in lines[1:]]
    assert len(table) == TINY["num_speakers"]
    voices = set()
    for spk, split, accent, variant, rate, pitch in table:
        assert accent in av_digits.ACCENTS
        assert variant in av_digits.PLAIN_VARIANTS
        # speaker_variety=0: every voice speaks at RATE, pitch 60.
        assert int(rate) == av_digits.RATE and int(pitch) == 60
        if spk in speakers["train"] | speakers["test"]:
            assert spk in speakers[split]
        voices.add((accent, variant))
    assert len(voices) == len(table)


def test_deterministic_given_seed(tiny_root, tmp_path):
    again = av_digits.generate(tmp_path / "again", **TINY)
    assert _all_files(again) == _all_files(tiny_root)


def _noise_snr_db(clean_root, noisy_root):
    """SNR measured from a clean and a noisy copy with the same seed."""
    ratios = []
    for clip, _ in _rows(clean_root, "train") + _rows(clean_root, "test"):
        clean = _read_wav(clean_root / "AudioWAV" / f"{clip}.wav")
        noisy = _read_wav(noisy_root / "AudioWAV" / f"{clip}.wav")
        nonzero = np.flatnonzero(clean)
        voiced = slice(nonzero[0], nonzero[-1] + 1)
        noise = noisy - clean
        ratios.append(np.mean(clean[voiced] ** 2) / np.mean(noise**2))
    return 10 * np.log10(np.mean(ratios))


def test_snr_and_image_noise_knobs(espeak, tmp_path):
    small = {**TINY, "num_clips": 12}
    clean = av_digits.generate(
        tmp_path / "clean", snr_db=None, image_noise=0.0, **small
    )
    for snr in (10.0, -5.0):
        noisy = av_digits.generate(
            tmp_path / f"snr{snr}", snr_db=snr, image_noise=0.0, **small
        )
        # Speech power is set over the synthesised utterance, which has a
        # little silence around the word: allow a few dB either way.
        assert abs(_noise_snr_db(clean, noisy) - snr) < 3.0
    noisy_img = av_digits.generate(
        tmp_path / "img", snr_db=None, image_noise=0.5, **small
    )
    clip = _rows(clean, "train")[0][0]
    a, b = (
        np.asarray(Image.open(r / "Image-01-FPS" / clip / "00000.jpg"), float)
        for r in (clean, noisy_img)
    )
    assert np.std(b - a) > 40  # about 0.5 * 255 before clipping
    # Audio is untouched by the image knob.
    wav = f"AudioWAV/{clip}.wav"
    assert (clean / wav).read_bytes() == (noisy_img / wav).read_bytes()


def test_cache_reused(espeak, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_OLM_CACHE", str(tmp_path))
    small = {"num_clips": 4, "num_speakers": 2, "verbose": False}
    root = av_digits.generate(**small)
    assert root.parent == tmp_path and root.name.startswith(
        f"av_digits-{av_digits.VERSION}-"
    )
    assert _cache.is_complete(root)

    def fail(jobs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(_espeak, "synthesize_batch", fail)
    assert av_digits.generate(**small) == root
    with pytest.raises(AssertionError, match="regenerated"):
        av_digits.generate(snr_db=3.0, **small)
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]


def test_audio_carries_more_class_information_than_frames(espeak, tmp_path):
    """Audio is the dominant modality, as in CREMA-D.

    A cheap measure: 5-fold cross-validated logistic regression on the
    fixed features of `_measure` (log band energies of the audio; 16x16
    grey pixels of the frame) over 150 clips. The benchmark behind the
    claim, with CNNs on the full set, is `benchmarks/imbalance.py`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from keras_olm.embedded import _measure

    root = av_digits.generate(
        tmp_path / "d", num_clips=150, num_speakers=10, verbose=False
    )
    audio, image, y = [], [], []
    for clip, label in _rows(root, "train") + _rows(root, "test"):
        wav = _read_wav(root / "AudioWAV" / f"{clip}.wav")
        audio.append(_measure._audio_features(wav))
        img = Image.open(root / "Image-01-FPS" / clip / "00000.jpg")
        img = img.convert("L").resize((16, 16), Image.BILINEAR)
        image.append(np.asarray(img, np.float32).ravel() / 255)
        y.append(av_digits.LABELS.index(label))

    def score(x):
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)
        )
        return cross_val_score(clf, np.array(x), np.array(y), cv=5).mean()

    audio_acc, image_acc = score(audio), score(image)
    assert image_acc > 0.15  # the frames still carry some information
    assert audio_acc > image_acc + 0.2, (audio_acc, image_acc)


def test_missing_speech_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_espeak, "available", lambda: False)
    with pytest.raises(ImportError, match="espeakng-loader"):
        av_digits.generate(tmp_path / "d", **TINY)
    assert not (tmp_path / "d").exists()
