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
