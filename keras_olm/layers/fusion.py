"""Late fusion: join per-modality features into one fused feature vector."""

import keras
from keras import ops

MODES = ("concat", "sum")


def pool_features(x):
    """One feature vector per sample from an encoder's output.

    Encoders may return vectors `(batch, d)`, sequences `(batch, t, d)` or
    feature maps `(batch, h, w, d)`, whose axes between the batch and the
    feature axis are averaged (the SeqPooling of Eq. 5), or a dict, as the
    sequence encoders do, whose `"pooled"` entry is used (their final
    [CLS] token). Every late fusion works on these vectors.
    """
    if isinstance(x, dict):
        if "pooled" not in x:
            raise ValueError(
                "An encoder that returns a dict must give its pooled "
                f"feature under 'pooled'; got keys {sorted(x)}."
            )
        return x["pooled"]
    rank = len(x.shape)
    if rank == 2:
        return x
    if rank < 2:
        raise ValueError(
            "Encoder outputs must have a batch and a feature axis; got "
            f"shape {x.shape}"
        )
    return ops.mean(x, axis=tuple(range(1, rank - 1)))


def _pooled_shapes(features_shape):
    """Shapes of the pooled features, as `pool_features` gives them."""
    return {
        m: tuple(s["pooled"]) if isinstance(s, dict) else tuple(s)
        for m, s in features_shape.items()
    }


@keras.saving.register_keras_serializable(package="keras_olm")
class LateFusion(keras.layers.Layer):
    """Late fusion of per-modality features (the paper's OLM-Conv setting).

    Every fusion layer of keras-olm takes a dict of encoder outputs and
    returns a dict with one feature tensor per modality (read by that
    modality's head) and one under `"fused"` (read by the fused head), so
    every balancer works with every fusion. Late fusion pools each encoder
    output to a vector and joins the vectors.

    Args:
        mode: str. `"concat"`: concatenate the features (the default of
            the paper's Table 1). `"sum"`: add them; features of different
            widths are first projected to `units` by one linear layer per
            modality. Defaults to `"concat"`.
        units: int or `None`. Width of the summed features in `"sum"` mode.
            `None` adds the features as they are when all widths agree and
            projects to the largest width otherwise. Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a tensor of shape
            `(batch, ..., d_m)`.

    Returns:
        A dict with the pooled `(batch, d_m)` feature of every modality and
        the fused `(batch, d)` feature under `"fused"`.

    Example:
    ```python
    fusion = keras_olm.LateFusion("concat")
    out = fusion({"audio": np.ones((2, 8)), "visual": np.ones((2, 4))})
    out["fused"].shape  # (2, 12)
    ```
    """

    def __init__(self, mode="concat", units=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.mode = mode
        self.units = units
        self.projections = {}

    def build(self, features_shape):
        features_shape = _pooled_shapes(features_shape)
        widths = {m: s[-1] for m, s in features_shape.items()}
        if self.mode == "sum":
            units = self.units
            if units is None and len(set(widths.values())) > 1:
                units = max(widths.values())
            if units is not None:
                for m, shape in features_shape.items():
                    proj = keras.layers.Dense(units, name=f"{m}_projection")
                    proj.build((shape[0], shape[-1]))
                    self.projections[m] = proj
        self.built = True

    def call(self, features):
        pooled = {m: pool_features(x) for m, x in features.items()}
        if self.mode == "concat":
            fused = ops.concatenate(list(pooled.values()), axis=-1)
        else:
            parts = [
                self.projections[m](x) if m in self.projections else x
                for m, x in pooled.items()
            ]
            fused = parts[0]
            for part in parts[1:]:
                fused = fused + part
        return {**pooled, "fused": fused}

    def compute_output_shape(self, features_shape):
        features_shape = _pooled_shapes(features_shape)
        out = {m: (s[0], s[-1]) for m, s in features_shape.items()}
        batch = next(iter(features_shape.values()))[0]
        if self.mode == "concat":
            width = sum(s[-1] for s in features_shape.values())
        elif self.projections:
            width = next(iter(self.projections.values())).units
        else:
            width = next(iter(features_shape.values()))[-1]
        out["fused"] = (batch, width)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, units=self.units)
        return config
