"""MER sequences: generated feature sequences in the MER-MULTI layout.

A stand-in for MER-MULTI (MER 2023) that runs offline: every clip has a
discrete emotion (the 6 MER-MULTI classes), a valence in [-5, 5] that
follows the emotion, and one feature sequence per modality (audio, text,
video and HOG by default) of its own random length, as pre-extracted
features are. Sequences are written one `.npy` file per clip and modality
with the clip list in `<split>-label.csv`, the layout (b) that
`keras_olm.data.MerMulti` reads, so the same reader reads them and a real
copy.

How a clip is made. Emotion `c` is drawn with MER-like class frequencies,
and valence `v = clip(mu_c + 1.2 z, -5, 5)` with a class mean `mu_c`
(happiness +3, surprise +1, neutral 0, worry -2, anger -3, sadness -3.5)
and `z ~ N(0, 1)`. Each modality `m` then "sees" the clip: with
probability `informativeness[m]` it shows the true emotion, otherwise a
uniformly drawn one (a confusion the other modalities may correct, so
fusing them beats any one), and it sees the valence through its own noise,
`w_m = v + (0.5 + 3 (1 - informativeness[m])) e_m`. A sequence of length
`T ~ U[min_length, max_length]` then holds, at each step `t`,

    x_t = g_t * snr * (p_m[shown class] + (w_m / 5) u_m) + n_t,

with a fixed random unit prototype `p_m[k]` per class, a fixed unit
valence direction `u_m`, a gate `g_t ~ Bernoulli(0.5)` (the cue is present
in about half of the steps) and white noise `n_t ~ N(0, I)`. With the
defaults audio dominates (as in the paper's Table 3), text is weakest.

Layout written by `generate` (paths relative to the returned root):

```
<root>/train-label.csv                    "name,discrete,valence" + rows
<root>/test-label.csv
<root>/features/<modality>/<name>.npy     float32 (T, dim), T varies
```

Example:

```python
from keras_olm import data
from keras_olm.embedded import mer_sequences

root = mer_sequences.generate()
reader = data.MerMulti(root, modalities=mer_sequences.MODALITIES,
                       target="both", max_len=24)
train = reader.as_dataset("train", batch_size=32)
```
"""

import csv
import pathlib
import zlib

import numpy as np

from keras_olm.data.features import MER_CLASSES
from keras_olm.embedded import _cache

VERSION = "1"
NAME = "mer_sequences"

CLASSES = MER_CLASSES
MODALITIES = ("audio", "text", "video", "hog")
#: Class means of the valence (same order as `CLASSES`).
VALENCE_MEANS = (3.0, 0.0, -3.0, -3.5, -2.0, 1.0)
#: Class frequencies, roughly MER 2023's (neutral and happiness common).
CLASS_FREQUENCIES = (0.25, 0.25, 0.15, 0.15, 0.10, 0.10)
DEFAULT_INFORMATIVENESS = {
    "audio": 0.85,
    "video": 0.6,
    "hog": 0.55,
    "text": 0.4,
}
DEFAULT_DIMS = {"audio": 32, "text": 32, "video": 32, "hog": 16}
DEFAULT_LENGTHS = {
    "audio": (8, 24),
    "text": (4, 16),
    "video": (6, 20),
    "hog": (6, 20),
}
VALENCE_SPREAD = 1.2


def _resolve(value, default, modalities, what):
    value = dict(default if value is None else value)
    missing = [m for m in modalities if m not in value]
    if missing:
        raise ValueError(f"`{what}` has no entry for modalities {missing}.")
    return {m: value[m] for m in modalities}


def make_clips(
    n,
    seed=0,
    modalities=MODALITIES,
    informativeness=None,
    dims=None,
    lengths=None,
    snr=1.0,
):
    """Draws `n` clips in memory (what `generate` writes to disk).

    Args:
        n: int. Number of clips.
        seed: int. Random seed. Defaults to `0`.
        modalities: tuple of str. Defaults to `MODALITIES`.
        informativeness: dict from modality to a float in [0, 1]: the
            probability that the modality shows the clip's true emotion
            (else a random one); it also sets the modality's valence noise.
            Defaults to `DEFAULT_INFORMATIVENESS` (audio dominant).
        dims: dict from modality to feature width. Defaults to
            `DEFAULT_DIMS`.
        lengths: dict from modality to `(min_length, max_length)`.
            Defaults to `DEFAULT_LENGTHS`.
        snr: float. Scale of the cue against unit noise. Defaults to `1.0`.

    Returns:
        `(features, emotion, valence)`: a dict from modality to a list of
        `n` float32 arrays `(T_i, dim)`, int emotions `(n,)` and float32
        valences `(n,)` rounded to 3 decimals.
    """
    modalities = tuple(modalities)
    info = _resolve(
        informativeness, DEFAULT_INFORMATIVENESS, modalities, "informativeness"
    )
    dims = _resolve(dims, DEFAULT_DIMS, modalities, "dims")
    lengths = _resolve(lengths, DEFAULT_LENGTHS, modalities, "lengths")
    for m in modalities:
        if not 0.0 <= info[m] <= 1.0:
            raise ValueError(
                f"informativeness[{m!r}] must be in [0, 1]; got {info[m]}."
            )
        lo, hi = lengths[m]
        if not 1 <= lo <= hi:
            raise ValueError(
                f"lengths[{m!r}] must be (min, max) with 1 <= min <= max; "
                f"got {lengths[m]}."
            )
    k = len(CLASSES)
    # The fixed structure (prototypes, valence directions) depends on the
    # modality only, so that train and test (drawn with other seeds) agree.
    structure = {}
    for m in modalities:
        rs = np.random.default_rng([7919, zlib.crc32(m.encode()), dims[m]])
        protos = rs.normal(size=(k, dims[m]))
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        u = rs.normal(size=dims[m])
        structure[m] = (protos, u / np.linalg.norm(u))
    rng = np.random.default_rng(seed)
    emotion = rng.choice(k, size=n, p=np.asarray(CLASS_FREQUENCIES))
    valence = np.asarray(VALENCE_MEANS)[emotion] + VALENCE_SPREAD * (
        rng.normal(size=n)
    )
    valence = np.round(np.clip(valence, -5.0, 5.0), 3)
    features = {}
    for m in modalities:
        protos, u = structure[m]
        honest = rng.random(n) < info[m]
        shown = np.where(honest, emotion, rng.integers(0, k, n))
        noise_sd = 0.5 + 3.0 * (1.0 - info[m])
        seen_valence = valence + noise_sd * rng.normal(size=n)
        lo, hi = lengths[m]
        steps = rng.integers(lo, hi + 1, n)
        clips = []
        for i in range(n):
            cue = snr * (protos[shown[i]] + (seen_valence[i] / 5.0) * u)
            gate = rng.random((steps[i], 1)) < 0.5
            x = gate * cue + rng.normal(size=(steps[i], dims[m]))
            clips.append(x.astype(np.float32))
        features[m] = clips
    return features, emotion.astype(np.int64), valence.astype(np.float32)


def _write_split(tmp, split, names, features, emotion, valence):
    with open(tmp / f"{split}-label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "discrete", "valence"])
        for name, e, v in zip(names, emotion, valence, strict=True):
            writer.writerow([name, CLASSES[e], f"{float(v):.3f}"])
    for m, clips in features.items():
        folder = tmp / "features" / m
        folder.mkdir(parents=True, exist_ok=True)
        for name, clip in zip(names, clips, strict=True):
            np.save(folder / f"{name}.npy", clip)


def generate(
    root=None,
    num_train=1200,
    num_test=400,
    seed=0,
    modalities=MODALITIES,
    informativeness=None,
    dims=None,
    lengths=None,
    snr=1.0,
    overwrite=False,
    verbose=False,
):
    """Generate (once) the MER sequences in the MER-MULTI layout.

    The dataset is written into a temporary directory and renamed into
    place when complete; a later call with the same arguments returns the
    cached directory. The same arguments give the same files.

    Measured with logistic regression on the time-averaged features of the
    defaults (`tests/test_mer_sequences.py` checks the order): audio is the
    best single modality, text the weakest, and all four together beat
    audio.

    Args:
        root: str or path. Directory to write into (absent, empty, or a
            dataset generated with the same parameters). Defaults to
            `$KERAS_OLM_CACHE/mer_sequences-<version>-<hash>` where
            `$KERAS_OLM_CACHE` defaults to `~/.cache/keras_olm`.
        num_train: int. Clips in the train split. Defaults to `1200`.
        num_test: int. Clips in the test split. Defaults to `400`.
        seed: int. Random seed. Defaults to `0`.
        modalities: tuple of str. Feature folders written. Defaults to
            `("audio", "text", "video", "hog")`.
        informativeness: dict from modality to a float in [0, 1]; see
            `make_clips`. Defaults to audio 0.85, video 0.6, hog 0.55,
            text 0.4.
        dims: dict from modality to feature width. Defaults to 32 (16 for
            hog).
        lengths: dict from modality to `(min_length, max_length)`.
            Defaults to audio (8, 24), text (4, 16), video and hog (6, 20).
        snr: float. Cue scale against unit noise. Defaults to `1.0`.
        overwrite: bool. Regenerate even if a complete copy exists.
            Defaults to `False`.
        verbose: bool. Print a line while generating. Defaults to `False`.

    Returns:
        The dataset root as a `pathlib.Path`.

    Example:

    ```python
    root = keras_olm.embedded.mer_sequences.generate(num_train=300)
    print((root / "train-label.csv").read_text().splitlines()[1])
    ```
    """
    if num_train < 1 or num_test < 1:
        raise ValueError("`num_train` and `num_test` must be at least 1.")
    modalities = tuple(modalities)
    params = {
        "num_train": int(num_train),
        "num_test": int(num_test),
        "seed": int(seed),
        "modalities": list(modalities),
        "informativeness": _resolve(
            informativeness,
            DEFAULT_INFORMATIVENESS,
            modalities,
            "informativeness",
        ),
        "dims": _resolve(dims, DEFAULT_DIMS, modalities, "dims"),
        "lengths": {
            m: list(v)
            for m, v in _resolve(
                lengths, DEFAULT_LENGTHS, modalities, "lengths"
            ).items()
        },
        "snr": float(snr),
    }

    def writer(tmp, final_root):
        if verbose:
            print(f"Generating MER sequences into {final_root}", flush=True)
        for split, n, offset in (
            ("train", num_train, 0),
            ("test", num_test, num_train),
        ):
            features, emotion, valence = make_clips(
                n,
                seed=[int(seed), 0 if split == "train" else 1],
                modalities=modalities,
                informativeness=params["informativeness"],
                dims=params["dims"],
                lengths={m: tuple(v) for m, v in params["lengths"].items()},
                snr=snr,
            )
            names = [f"sample_{offset + i:06d}" for i in range(n)]
            _write_split(
                pathlib.Path(tmp), split, names, features, emotion, valence
            )

    return _cache.generate_atomically(
        writer, NAME, VERSION, params, root=root, overwrite=overwrite
    )
