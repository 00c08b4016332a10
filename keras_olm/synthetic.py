"""Small array problems in memory. Also: data (readers), embedded (writers).

A generated two-modality problem with a fast and a slow modality, returned
as numpy arrays (nothing on disk: `keras_olm.data` reads datasets on disk,
`keras_olm.embedded` writes the project's own). Used by the tests, the
benchmarks and the quickstart: the imbalance the paper is about, in a form
that trains in seconds on a CPU.
"""

import numpy as np


def make_imbalanced(
    num_samples=2000,
    num_classes=4,
    fast_dim=16,
    slow_dim=64,
    fast_reliability=0.85,
    fast_separation=4.0,
    slow_separation=0.2,
    seed=0,
):
    """Two modalities: one fast and unreliable, one slow and reliable.

    The label is uniform over `num_classes`. The "fast" modality shows the
    label as a well-separated cluster mean (easy, learned in a few steps)
    but only for a `fast_reliability` share of the samples; for the rest
    it shows a random class. The "slow" modality shows the label for every
    sample, but as a faint mean shift (`slow_separation` per dimension)
    spread over `slow_dim` noisy dimensions, so it is learned slowly. Joint
    training latches onto the fast modality and leaves the slow one behind;
    fusing both is best. With the defaults and two 32-unit MLP encoders
    (12 epochs, 2,000 samples), plain joint training reaches about 0.86
    (fast head), 0.62 (slow head) and 0.88 (fused).

    Args:
        num_samples: int. Number of samples. Defaults to 2000.
        num_classes: int. Number of classes. Defaults to 4.
        fast_dim: int. Width of the fast modality. Defaults to 16.
        slow_dim: int. Width of the slow modality. Defaults to 64.
        fast_reliability: float. Share of samples whose fast features show
            the true class. Defaults to 0.85.
        fast_separation: float. Norm of the fast class means. Defaults to
            4.0.
        slow_separation: float. Per-dimension shift of the slow class
            means. Defaults to 0.2.
        seed: int. Defaults to 0.

    Returns:
        `(x, y)`: a dict `{"fast": (n, fast_dim), "slow": (n, slow_dim)}`
        of float32 arrays and int32 labels `(n,)`.

    Example:
    ```python
    x, y = keras_olm.synthetic.make_imbalanced(1000, seed=1)
    ```
    """
    rng = np.random.default_rng(seed)
    # Class prototypes are fixed by a separate stream so that every seed
    # draws samples of the same problem.
    proto = np.random.default_rng(12345)
    fast_means = proto.normal(size=(num_classes, fast_dim))
    fast_means *= fast_separation / np.linalg.norm(
        fast_means, axis=1, keepdims=True
    )
    slow_means = proto.choice([-1.0, 1.0], size=(num_classes, slow_dim))
    slow_means *= slow_separation

    y = rng.integers(0, num_classes, size=num_samples)
    shown = np.where(
        rng.random(num_samples) < fast_reliability,
        y,
        rng.integers(0, num_classes, size=num_samples),
    )
    fast = fast_means[shown] + rng.normal(size=(num_samples, fast_dim))
    slow = slow_means[y] + rng.normal(size=(num_samples, slow_dim))
    x = {"fast": fast.astype("float32"), "slow": slow.astype("float32")}
    return x, y.astype("int32")


# --- a family of generated problems with knobs ---------------------------

#: The named members of the family: modality name -> knobs of
#: `make_modalities` (see there). "fast" is the dominant modality.
PROBLEMS = {
    # The dominant modality is clean and low-dimensional; the weak one
    # shows the label faintly in 64 dimensions and generalizes too.
    "dominant-generalizes": dict(
        fast=dict(dim=16, separation=4.0, reliability=0.85),
        slow=dict(dim=64, informative=64, separation=1.6),
    ),
    # The weak modality spreads its signal over 32 of 256 dimensions: a
    # small training set is memorized through the other 224.
    "weak-overfits": dict(
        fast=dict(dim=8, separation=3.5, reliability=0.8),
        slow=dict(dim=256, informative=32, separation=2.0, reliability=0.9),
    ),
    # The paper's premise: the dominant modality is learned fast and
    # overfits (30% of its samples show a random class, memorized through
    # 248 noise dimensions); the weak one is low-dimensional and clean.
    "dominant-overfits": dict(
        fast=dict(dim=256, informative=8, separation=4.0, reliability=0.7),
        slow=dict(dim=16, separation=1.5),
    ),
    # Complementary: the dominant modality only shows which pair of
    # classes (0-1, 2-3) a sample is in; only the weak one splits pairs.
    "complementary": dict(
        fast=dict(dim=8, separation=4.0, reliability=0.95, shows="pair"),
        slow=dict(dim=128, informative=32, separation=2.5),
    ),
    # Both modalities have few informative and many noise dimensions.
    "both-overfit": dict(
        fast=dict(dim=256, informative=8, separation=3.5, reliability=0.75),
        slow=dict(dim=256, informative=32, separation=2.0, reliability=0.9),
    ),
    # M = 3: one dominant modality and two weak, overfitting ones.
    "three-modalities": dict(
        fast=dict(dim=8, separation=3.5, reliability=0.75),
        slow=dict(dim=128, informative=16, separation=1.6),
        slow2=dict(dim=128, informative=16, separation=1.6),
    ),
}


def make_modalities(
    modalities, num_samples=2000, num_classes=4, seed=0, problem_seed=0
):
    """Any number of modalities, each with its own knobs.

    The label y is uniform over `num_classes`. Modality m shows a class c_m
    (y itself for a `reliability` share of samples, a random class for the
    rest; with `shows="pair"` the pair y // 2, so classes 2k and 2k + 1
    look the same) as a class mean of norm `separation` in its first
    `informative` dimensions, plus unit Gaussian noise in all `dim`
    dimensions. Few informative among many dimensions, a small training
    set and unreliable samples make a modality overfit; a large separation
    in few dimensions makes it fast (dominant).

    Args:
        modalities: dict from modality name to a dict of knobs: `dim`
            (int), `informative` (int, defaults to `dim`), `separation`
            (float, the norm of each class mean), `reliability` (float,
            defaults to 1) and `shows` (`"class"`, the default, or
            `"pair"`).
        num_samples: int. Defaults to 2000.
        num_classes: int. Defaults to 4 (even when a modality shows pairs).
        seed: int. Draws the samples. Defaults to 0.
        problem_seed: int. Draws the class means, so that every `seed`
            draws samples of the same problem. Defaults to 0.

    Returns:
        `(x, y)`: a dict of float32 arrays `(num_samples, dim)` per modality
        and int32 labels `(num_samples,)`.
    """
    rng = np.random.default_rng(seed)
    proto = np.random.default_rng(54321 + problem_seed)
    y = rng.integers(0, num_classes, size=num_samples)
    x = {}
    for name, knobs in modalities.items():
        dim = int(knobs["dim"])
        informative = int(knobs.get("informative", dim))
        shows = knobs.get("shows", "class")
        if shows not in ("class", "pair"):
            raise ValueError(f"shows must be 'class' or 'pair'; got {shows!r}")
        if shows == "pair" and num_classes % 2:
            raise ValueError("shows='pair' needs an even num_classes")
        num_means = num_classes // 2 if shows == "pair" else num_classes
        means = proto.normal(size=(num_means, informative))
        means *= knobs["separation"] / np.linalg.norm(
            means, axis=1, keepdims=True
        )
        shown = np.where(
            rng.random(num_samples) < knobs.get("reliability", 1.0),
            y,
            rng.integers(0, num_classes, size=num_samples),
        )
        if shows == "pair":
            shown = shown // 2
        features = rng.normal(size=(num_samples, dim))
        features[:, :informative] += means[shown]
        x[name] = features.astype("float32")
    return x, y.astype("int32")


def make_problem(name, num_samples=2000, seed=0):
    """One named member of the family of generated problems.

    The members (`PROBLEMS`) vary which modality dominates (fast,
    low-dimensional, large separation), which overfits (few informative
    among many noisy dimensions, unreliable samples), whether the
    modalities are complementary (only the weak one splits pairs of
    classes) and the number of modalities (2 or 3). Four classes each;
    the dominant modality is called `"fast"`, the weak ones `"slow"` and
    `"slow2"`.

    Args:
        name: str. One of `PROBLEMS`: `"dominant-generalizes"`,
            `"weak-overfits"`, `"dominant-overfits"`, `"complementary"`,
            `"both-overfit"`, `"three-modalities"`.
        num_samples: int. Defaults to 2000.
        seed: int. Draws the samples; the class means are the problem's
            own. Defaults to 0.

    Returns:
        `(x, y)` as `make_modalities`.

    Example:
    ```python
    x, y = keras_olm.synthetic.make_problem("weak-overfits", 2000, seed=1)
    ```
    """
    if name not in PROBLEMS:
        raise ValueError(f"name must be one of {list(PROBLEMS)}; got {name!r}")
    return make_modalities(
        PROBLEMS[name],
        num_samples=num_samples,
        num_classes=4,
        seed=seed,
        problem_seed=list(PROBLEMS).index(name),
    )
