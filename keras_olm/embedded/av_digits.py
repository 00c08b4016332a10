"""Audio-visual digits: a CREMA-D-shaped stand-in from real data, offline.

Each clip pairs one of scikit-learn's 1,797 real handwritten 8x8 digits
(`sklearn.datasets.load_digits`, shipped with scikit-learn, no download),
upsampled to an RGB frame, with the digit's name ("zero".."nine") spoken by
espeak-ng. Speakers are combinations of 8 English accents and espeak-ng's
voice variants (by default its 13 plain male and female ones,
`PLAIN_VARIANTS`; `variants="all"` for the ~100 bundled, whispering and
robotic ones included), a speaking rate around `rate` words a minute and a
pitch around 60 (spread by `speaker_variety`); the train/test split is by
speaker, so test voices are never heard in training. Optional pink noise
on the audio (`snr_db`) and the degradation of the frames (digit size,
contrast, occlusion, clutter strokes, rotation and shear, pixel noise)
set how informative each modality is.

The defaults (version 5) aim at the imbalance of CREMA-D as the field
measures it: audio that fits the training set within a few
epochs but generalizes less than perfectly, and frames that are learned
more slowly. The audio carries the class in the spoken word: 16 plain
voices that differ by accent and espeak-ng variant only, spoken slowly
(rate 110, pitch 60: `speaker_variety=0`) in a short clip (0.7 s, about
one word at that rate, so the word sits at nearly the same place in every
clip), with pink noise at 15 dB (`snr_db=15`). The split is by speaker,
so the 13 training voices are all the audio encoder hears: a small CNN
fits them within three epochs (training accuracy 0.99 by the third, and
validation, drawn from the same voices, 0.98) but scores 0.83 on the 3
unseen test voices (0.78-0.86 by seed), still above the frames: the
dominant modality. The frames carry the class in the digit's shape
only: large (18-24 px of 32) but faint digits (contrast 0.2-0.4 on a
random grey, pixel noise 0.1), a little rotated and sheared, without
clutter or occlusion; a CNN on the frames alone reaches 0.77, more
slowly than the audio (0.65 validation accuracy after three epochs).
Under joint training the fused loss is nearly spent by the third epoch
(training accuracy 0.99), so the frame encoder stops short: a linear
probe on it scores 6.9 points below the frames alone on average over
three seeds (6.5 to 7.4 by seed; 4.7 with the probe refit on the frozen
encoder), and the average of the two unimodal models is level with the
jointly trained one (+0.3 points, from -1.8 to +3.3 by seed). With 64
voices and clean speech (version 4) the audio reached 0.985 on unseen
voices and the probe fell only 4.6 points short. Lower `contrast`, more
`image_noise`, `clutter` or `occlusion` weaken the frames; a lower
`snr_db` or fewer `num_speakers` weaken the audio on unseen voices.

Layout written by `generate` (CREMA-D's, relative to the returned root):

```
<root>/AudioWAV/<clip>.wav               mono 16-bit PCM, 22,050 Hz
<root>/Image-01-FPS/<clip>/00000.jpg     one RGB frame per clip
<root>/train.csv                         rows "<clip>,<LABEL>", no header
<root>/test.csv                          rows "<clip>,<LABEL>", no header
<root>/speakers.csv                      header + one row per speaker
```

`<clip>` is `<speaker>_<index:05d>_<LABEL>`, where `<speaker>` is a 4-digit
id starting at 1001 (as CREMA-D's actor ids) and `<index>` the position of
the digit in `load_digits`. `<LABEL>` is the digit's upper-case name, from
`LABELS = ("ZERO", ..., "NINE")`; its index in `LABELS` is the digit, so a
reader maps labels with `{name: i for i, name in enumerate(LABELS)}` the
way CREMA-D readers map `NEU, HAP, SAD, FEA, DIS, ANG` to 0..5.
`speakers.csv` (columns `speaker,split,accent,variant,rate,pitch`) records
every voice; it is metadata only, no reader needs it.

Requires the optional `espeakng-loader` package (`pip install
keras-olm[speech]`); espeak-ng is GPL-licensed, so it is not a default
dependency, and `generate` raises an `ImportError` naming it when absent.

Example:

```python
from keras_olm.embedded import av_digits

root = av_digits.generate()  # ~/.cache/keras_olm/av_digits-5-<hash>
rows = (root / "train.csv").read_text().split()
```
"""

import io
import wave

import numpy as np

from keras_olm.embedded import _cache
from keras_olm.embedded import _espeak

VERSION = "5"
NAME = "av_digits"
SAMPLE_RATE = _espeak.SAMPLE_RATE
WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
LABELS = tuple(w.upper() for w in WORDS)
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
NUM_DIGITS = 1797
# espeak-ng's plain male and female voice variants (no whispering, croaking
# or robotic voices): with 8 accents, 104 voices.
PLAIN_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
)
SNR_DB = 15.0
NUM_SPEAKERS = 16
SPEAKER_VARIETY = 0.0
VARIANTS = "plain"
RATE = 110
CLIP_SECONDS = 0.7
IMAGE_NOISE = 0.1
DIGIT_SIZE = (18, 24)
CONTRAST = (0.2, 0.4)
OCCLUSION = 0.0
CLUTTER = 0
DISTORTION = 0.7


def _speakers(num_speakers, rng, variants, speaker_variety=1.0, rate=180):
    """Distinct voices: accent, variant, rate and pitch for each speaker.

    Rates are drawn from `rate` +- 60 * `speaker_variety` words a minute
    and pitches from 60 +- 40 * `speaker_variety` (at 1: 20-100).
    """
    combos = [(a, v) for a in ACCENTS for v in variants]
    picks = rng.choice(len(combos), size=num_speakers, replace=False)
    spread = 60 * speaker_variety
    pitch = min(40 * speaker_variety, 39)
    return [
        {
            "accent": combos[p][0],
            "variant": combos[p][1],
            "rate": int(round(rng.uniform(rate - spread, rate + spread))),
            "pitch": int(round(rng.uniform(60 - pitch, 60 + pitch))),
        }
        for p in picks
    ]


def _pink_noise(n, rng):
    """Unit-power noise with a 1/f power spectrum."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x**2) + 1e-12)


def make_audio(speech, rng, snr_db, clip_seconds):
    """Place an utterance in a clip and add pink noise at `snr_db`.

    Args:
        speech: int16 array. The utterance at 22,050 Hz.
        rng: `np.random.Generator`. Source of onset, gain and noise.
        snr_db: float or None. Ratio of speech power (over the utterance)
            to noise power, in dB; `None` adds no noise.
        clip_seconds: float. Clip length; longer utterances lengthen it.

    Returns:
        float32 samples in [-1, 1].
    """
    s = speech.astype(np.float64) / 32768.0
    s = s / (np.abs(s).max() + 1e-9) * rng.uniform(0.3, 0.7)
    n = max(int(clip_seconds * SAMPLE_RATE), len(s) + SAMPLE_RATE // 20)
    onset = int(rng.integers(0, n - len(s) + 1))
    clip = np.zeros(n)
    clip[onset : onset + len(s)] = s
    if snr_db is not None:
        power = np.mean(s**2) if len(s) else 0.0
        clip += _pink_noise(n, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def make_frame(
    digit,
    rng,
    image_size=32,
    image_noise=IMAGE_NOISE,
    digit_size=DIGIT_SIZE,
    contrast=CONTRAST,
    occlusion=OCCLUSION,
    clutter=CLUTTER,
    distortion=DISTORTION,
):
    """Render an 8x8 digit (0..16) as a degraded grey RGB uint8 frame.

    The digit is upsampled to a random size in `digit_size`, rotated by up
    to `10 * distortion` degrees and sheared by up to `0.15 * distortion`
    (more handwriting variety than the 1,797 originals), and added with a
    random contrast in `contrast` to a flat background of random grey
    (0.3..0.7), near the centre (up to 30% of the free margin off it).
    Before it, `clutter` straight strokes of random grey cross the frame;
    after it, with probability `occlusion`, a flat grey rectangle of a
    fifth to a third of the frame's side covers part of the digit. Then
    Gaussian noise of standard deviation `image_noise` (intensities in
    [0, 1]).

    Args:
        digit: array `(8, 8)` of ink 0..16 (`load_digits().images[k]`).
        rng: `np.random.Generator`. Source of every random choice.
        image_size: int. Height and width of the frame. Defaults to `32`.
        image_noise: float. Standard deviation of the pixel noise.
            Defaults to `0.1`.
        digit_size: pair of int. Range of the digit's side in pixels.
            Defaults to `(18, 24)`.
        contrast: pair of float. Range of the ink's and the strokes'
            contrast against the background. Defaults to `(0.2, 0.4)`.
        occlusion: float. Probability of an occluding rectangle. Defaults
            to `0.0`.
        clutter: int. Number of strokes. Defaults to `0`.
        distortion: float. Scale of the random rotation and shear; `0`
            keeps the digit upright. Defaults to `0.7`.

    Returns:
        uint8 array `(image_size, image_size, 3)`, the same grey in each
        channel.
    """
    from PIL import Image
    from PIL import ImageDraw

    n = image_size
    size = int(rng.integers(digit_size[0], digit_size[1] + 1))
    img = Image.fromarray((digit / 16.0 * 255).astype(np.uint8))
    img = img.resize((size, size), Image.BICUBIC)
    pad = size // 2
    k = size + 2 * pad
    canvas = Image.new("L", (k, k), 0)
    canvas.paste(img, (pad, pad))
    angle = rng.uniform(-10.0, 10.0) * distortion
    shear = rng.uniform(-0.15, 0.15) * distortion
    canvas = canvas.transform(
        canvas.size,
        Image.AFFINE,
        (1, shear, -shear * k / 2, 0, 1, 0),
        resample=Image.BILINEAR,
    ).rotate(angle, resample=Image.BILINEAR)
    x = np.full((n, n), rng.uniform(0.3, 0.7))
    strokes = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(strokes)
    for _ in range(clutter):
        p = rng.uniform(0, n, 4)
        draw.line(
            [(p[0], p[1]), (p[2], p[3])],
            fill=int(rng.integers(60, 256)),
            width=int(rng.integers(1, 3)),
        )
    strokes = np.asarray(strokes, np.float64) / 255.0
    x += rng.choice([-1, 1]) * rng.uniform(*contrast) * strokes
    # Paste the distorted digit's canvas, centred at (cy, cx), into a
    # padded frame and crop, so that it may overhang the border.
    margin = max(n - size, 0) / 2
    cy, cx = n / 2 + 0.3 * rng.uniform(-margin, margin, 2)
    top, left = int(round(cy - k / 2)) + k, int(round(cx - k / 2)) + k
    full = np.zeros((n + 3 * k, n + 3 * k))
    full[top : top + k, left : left + k] = np.asarray(canvas) / 255.0
    x += rng.uniform(*contrast) * full[k : k + n, k : k + n]
    if rng.uniform() < occlusion:
        h, w = rng.integers(n // 5, n // 3 + 1, 2)
        y0 = int(np.clip(cy + rng.uniform(-size, size) / 3 - h / 2, 0, n - h))
        x0 = int(np.clip(cx + rng.uniform(-size, size) / 3 - w / 2, 0, n - w))
        x[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.2, 0.8)
    if image_noise:
        x = x + rng.normal(0.0, image_noise, x.shape)
    x = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1)


def _write_wav(path, samples):
    pcm = np.round(np.asarray(samples) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def _write_jpeg(path, rgb, quality):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


def _variants(variants):
    """The variant names `"plain"` or `"all"` stand for, or `variants`."""
    if variants == "plain":
        return list(PLAIN_VARIANTS)
    if variants == "all":
        return _espeak.variants()
    return [str(v) for v in variants]


def _plan(
    num_clips,
    num_speakers,
    test_fraction,
    seed,
    speaker_variety,
    variants,
    rate=180,
):
    """Speakers, their split, and (digit index, speaker) for every clip."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng([seed, 15485863])
    speakers = _speakers(
        num_speakers, rng, _variants(variants), speaker_variety, rate
    )
    n_test = int(round(num_speakers * test_fraction))
    if num_speakers >= 2:
        n_test = min(max(n_test, 1), num_speakers - 1)
    test = set(rng.permutation(num_speakers)[:n_test].tolist())
    for i, spk in enumerate(speakers):
        spk["id"] = 1001 + i
        spk["split"] = "test" if i in test else "train"
    order = rng.permutation(len(digits.target))[:num_clips]
    clips = [(int(k), j % num_speakers) for j, k in enumerate(order)]
    return digits, speakers, clips


def generate(
    root=None,
    num_clips=None,
    num_speakers=NUM_SPEAKERS,
    speaker_variety=SPEAKER_VARIETY,
    variants=VARIANTS,
    rate=RATE,
    snr_db=SNR_DB,
    image_noise=IMAGE_NOISE,
    digit_size=DIGIT_SIZE,
    contrast=CONTRAST,
    occlusion=OCCLUSION,
    clutter=CLUTTER,
    distortion=DISTORTION,
    image_size=32,
    clip_seconds=CLIP_SECONDS,
    test_fraction=0.2,
    seed=0,
    jpeg_quality=90,
    overwrite=False,
    verbose=True,
):
    """Generate (once) the audio-visual digits in the CREMA-D layout.

    The dataset is written into a temporary directory and renamed into place
    when complete; a later call with the same arguments returns the cached
    directory without regenerating. See the module docstring for the exact
    layout, clip names and label mapping. Audio is bit-reproducible: speech
    is synthesised in a fresh subprocess (see `_espeak`).

    With the defaults audio is the dominant modality and the frames are
    weak but informative. `python -m keras_olm.embedded._measure
    av_digits` checks each modality alone with logistic regression on
    fixed features.

    Args:
        root: str or path. Directory to write the dataset into (must be
            absent, empty, or a dataset generated with the same
            parameters). Defaults to
            `$KERAS_OLM_CACHE/av_digits-<version>-<hash of the parameters>`
            where `$KERAS_OLM_CACHE` defaults to `~/.cache/keras_olm`.
        num_clips: int. Number of clips; each uses a different digit image.
            Defaults to `None`, all 1,797.
        num_speakers: int. Number of distinct voices; clips are spread
            evenly over them. Defaults to `16` (13 training and 3 test
            voices).
        snr_db: float. Signal-to-noise ratio of the audio in dB (speech
            power over the utterance against pink-noise power); lower is
            harder, `None` leaves the speech clean. Defaults to `15.0`.
        speaker_variety: float. Spread of the speakers' rates
            (`rate` +- 60 * `speaker_variety` words a minute) and pitches
            (60 +- 40 * `speaker_variety`, at most 21-99); `0` gives every
            voice rate `rate` and pitch 60 (voices still differ by accent
            and espeak-ng variant). Defaults to `0.0`.
        variants: `"plain"`, `"all"` or a list of str. espeak-ng voice
            variants the speakers are drawn from: `"plain"` for
            `PLAIN_VARIANTS` (8 accents x 13 variants: at most 104
            speakers), `"all"` for every variant bundled with espeak-ng.
            Defaults to `"plain"`.
        rate: int. Speaking rate in words a minute (espeak-ng accepts
            80-450). Defaults to `110`.
        image_noise: float. Standard deviation of the Gaussian noise added
            to frames with intensities in [0, 1]; `0` adds none. Defaults
            to `0.1`.
        digit_size: pair of int. Range of the digit's side in pixels.
            Defaults to `(18, 24)`.
        contrast: pair of float. Range of the digit's and the clutter
            strokes' contrast against the grey background. Defaults to
            `(0.2, 0.4)`.
        occlusion: float. Probability that a grey rectangle covers part
            of the digit. Defaults to `0.0`.
        clutter: int. Number of random strokes across each frame.
            Defaults to `0`.
        distortion: float. Scale of the random rotation (up to 10 degrees)
            and shear (up to 0.15) of the digit. Defaults to `0.7`.
        image_size: int. Height and width of the frames. Defaults to `32`.
        clip_seconds: float. Length of each clip; the utterance starts at a
            random onset (an utterance longer than the clip lengthens it to
            the utterance and 50 ms). Defaults to `0.7`: at rate 110 most
            words nearly fill it, so the word sits at almost the same place
            in every clip.
        test_fraction: float. Fraction of speakers held out for
            `test.csv`. Defaults to `0.2`.
        seed: int. Random seed; the same seed gives the same files.
            Defaults to `0`.
        jpeg_quality: int. JPEG quality of the frames. Defaults to `90`.
        overwrite: bool. Regenerate even if a complete copy exists.
            Defaults to `False`.
        verbose: bool. Show a progress bar while generating. Defaults to
            `True`.

    Returns:
        The dataset root as a `pathlib.Path`.

    Example:

    ```python
    root = keras_olm.embedded.av_digits.generate(snr_db=6.0)
    clip, label = (root / "test.csv").read_text().split()[0].split(",")
    wav = root / "AudioWAV" / f"{clip}.wav"
    ```
    """
    _espeak.require()
    if num_clips is None:
        num_clips = NUM_DIGITS
    if not 1 <= num_clips <= NUM_DIGITS:
        raise ValueError(f"`num_clips` must be in [1, {NUM_DIGITS}].")
    max_speakers = len(ACCENTS) * len(_variants(variants))
    if not 1 <= num_speakers <= max_speakers:
        raise ValueError(f"`num_speakers` must be in [1, {max_speakers}].")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError("`test_fraction` must be in [0, 1].")
    if image_size < 8:
        raise ValueError("`image_size` must be at least 8.")
    if image_noise < 0 or clip_seconds <= 0:
        raise ValueError("`image_noise` must be >= 0, `clip_seconds` > 0.")
    digit_size = [int(v) for v in digit_size]
    contrast = [float(v) for v in contrast]
    if len(digit_size) != 2 or not 1 <= digit_size[0] <= digit_size[1]:
        raise ValueError("`digit_size` must be a pair 1 <= low <= high.")
    if len(contrast) != 2 or not 0 <= contrast[0] <= contrast[1]:
        raise ValueError("`contrast` must be a pair 0 <= low <= high.")
    if not 0.0 <= occlusion <= 1.0 or clutter < 0 or distortion < 0:
        raise ValueError(
            "`occlusion` must be in [0, 1], `clutter` and `distortion` >= 0."
        )
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("`jpeg_quality` must be in [1, 100].")
    params = {
        "num_clips": int(num_clips),
        "num_speakers": int(num_speakers),
        "speaker_variety": float(speaker_variety),
        "rate": int(rate),
        "variants": variants if isinstance(variants, str) else list(variants),
        "snr_db": None if snr_db is None else float(snr_db),
        "image_noise": float(image_noise),
        "digit_size": digit_size,
        "contrast": contrast,
        "occlusion": float(occlusion),
        "clutter": int(clutter),
        "distortion": float(distortion),
        "image_size": int(image_size),
        "clip_seconds": float(clip_seconds),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "jpeg_quality": int(jpeg_quality),
    }

    frame_args = {
        "image_size": int(image_size),
        "image_noise": float(image_noise),
        "digit_size": digit_size,
        "contrast": contrast,
        "occlusion": float(occlusion),
        "clutter": int(clutter),
        "distortion": float(distortion),
    }

    def writer(tmp, final):
        digits, speakers, clips = _plan(
            num_clips,
            num_speakers,
            test_fraction,
            seed,
            speaker_variety,
            variants,
            rate,
        )
        progress = _cache.Progress(
            len(clips) + 1, verbose, f"Generating {NAME} into {final}"
        )
        jobs = [
            {
                "text": WORDS[digits.target[k]],
                "voice": f"{speakers[s]['accent']}+{speakers[s]['variant']}",
                "rate": speakers[s]["rate"],
                "pitch": speakers[s]["pitch"],
            }
            for k, s in clips
        ]
        speech = _espeak.synthesize_batch(jobs)
        progress.update()
        (tmp / "AudioWAV").mkdir()
        (tmp / "Image-01-FPS").mkdir()
        rows = {"train": [], "test": []}
        for (k, s), utterance in zip(clips, speech):
            rng = np.random.default_rng([seed, k, 32452843])
            label = LABELS[digits.target[k]]
            spk = speakers[s]
            clip = f"{spk['id']}_{k:05d}_{label}"
            audio = make_audio(utterance, rng, snr_db, clip_seconds)
            _write_wav(tmp / "AudioWAV" / f"{clip}.wav", audio)
            frame = make_frame(digits.images[k], rng, **frame_args)
            (tmp / "Image-01-FPS" / clip).mkdir()
            _write_jpeg(
                tmp / "Image-01-FPS" / clip / "00000.jpg", frame, jpeg_quality
            )
            rows[spk["split"]].append(f"{clip},{label}")
            progress.update()
        for split, lines in rows.items():
            (tmp / f"{split}.csv").write_text(
                "".join(line + "\n" for line in sorted(lines))
            )
        (tmp / "speakers.csv").write_text(
            "speaker,split,accent,variant,rate,pitch\n"
            + "".join(
                f"{p['id']},{p['split']},{p['accent']},{p['variant']},"
                f"{p['rate']},{p['pitch']}\n"
                for p in speakers
            )
        )

    return _cache.generate_atomically(
        writer, NAME, VERSION, params, root=root, overwrite=overwrite
    )
