"""Late fusion: join per-modality features into one fused feature vector.

The fusions of the paper's Table 1 (concatenation, summation, FiLM, gated,
attention) as layers of one shape: each takes the dict of encoder outputs
and returns `{modality: pooled feature, ..., FUSED: fused feature}` (the
`Fusion` contract), so every balancer and the unimodal heads work with
every fusion.
"""

import keras
from keras import ops

from keras_olm.layers.base import FUSED
from keras_olm.layers.base import Fusion

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
    shapes = {}
    for m, s in features_shape.items():
        if isinstance(s, dict):
            if "pooled" not in s:
                raise ValueError(
                    f"The encoder of modality '{m}' returns a dict, which "
                    "must give its pooled feature under 'pooled'; got keys "
                    f"{sorted(s)}."
                )
            s = s["pooled"]
        shapes[m] = tuple(s)
    return shapes


@keras.saving.register_keras_serializable(package="keras_olm")
class LateFusion(Fusion):
    """Late fusion of per-modality features (the paper's OLM-Conv setting).

    Pools each encoder output to a vector and joins the vectors. Like every
    `Fusion`, it returns one feature per modality (read by that modality's
    head) and one under `"fused"` (read by the fused head).

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
                    proj = keras.layers.Dense(
                        units, name=f"{m}_projection", dtype=self.dtype_policy
                    )
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
        return {**pooled, FUSED: fused}

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
        out[FUSED] = (batch, width)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, units=self.units)
        return config


def _pick_modality(layer, argument, value, modalities):
    """The modality named by `argument`, or the first one when `None`."""
    if value is None:
        return modalities[0]
    if value not in modalities:
        raise ValueError(
            f"{type(layer).__name__}: {argument}={value!r} is not one of the "
            f"modalities {modalities}."
        )
    return value


@keras.saving.register_keras_serializable(package="keras_olm")
class FiLMFusion(Fusion):
    """FiLM fusion: one modality modulates the others feature-wise.

    Feature-wise linear modulation (Perez et al., 2018), the "FiLM" row of
    the paper's Table 1, as in OGM-GE's code (Peng et al., 2022) that
    Table 1 follows: the conditioning modality c predicts a scale γ and a
    shift β for every feature of each other modality m,

        [γ_m, β_m] = W_m · pool(x_c) + b_m,   x̃_m = γ_m ⊙ pool(x_m) + β_m,

    and the fused feature is x̃_m (two modalities, exactly OGM-GE's
    `FiLM` before its output layer, which here is the fused head). With
    more than two modalities c modulates each other modality through its
    own `W_m`, and the fused feature is the concatenation of the x̃_m in
    the order of the input dict. The unimodal heads read the plain pooled
    features.

    Args:
        conditioning: str or `None`. The modality that predicts γ and β
            (OGM-GE's `x_film`). `None` takes the first modality of the
            input dict. Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a tensor of shape
            `(batch, ..., d_m)` or a dict with a `"pooled"` entry; at least
            two modalities.

    Returns:
        A dict with the pooled `(batch, d_m)` feature of every modality and
        the fused feature under `"fused"`, of width Σ_{m≠c} d_m.

    Example:
    ```python
    fusion = keras_olm.FiLMFusion(conditioning="audio")
    out = fusion({"audio": np.ones((2, 8)), "visual": np.ones((2, 4))})
    out["fused"].shape  # (2, 4): the visual feature, modulated by audio
    ```

    References:
        Perez et al., "FiLM: Visual Reasoning with a General Conditioning
        Layer", AAAI 2018.
    """

    def __init__(self, conditioning=None, **kwargs):
        super().__init__(**kwargs)
        self.conditioning = conditioning
        self.film_generators = {}

    def build(self, features_shape):
        self.check_modalities(features_shape)
        features_shape = _pooled_shapes(features_shape)
        modalities = list(features_shape)
        self._conditioning = _pick_modality(
            self, "conditioning", self.conditioning, modalities
        )
        cond_shape = features_shape[self._conditioning]
        for m, shape in features_shape.items():
            if m == self._conditioning:
                continue
            dense = keras.layers.Dense(
                2 * shape[-1], name=f"{m}_film", dtype=self.dtype_policy
            )
            dense.build((cond_shape[0], cond_shape[-1]))
            self.film_generators[m] = dense
        self.modalities = modalities
        self.built = True

    def call(self, features):
        self.check_modalities(features)
        self.check_built_modalities(features)
        pooled = {m: pool_features(x) for m, x in features.items()}
        cond = pooled[self._conditioning]
        parts = []
        for m, x in pooled.items():
            if m == self._conditioning:
                continue
            gamma, beta = ops.split(self.film_generators[m](cond), 2, axis=-1)
            parts.append(gamma * x + beta)
        fused = parts[0] if len(parts) == 1 else ops.concatenate(parts, -1)
        return {**pooled, FUSED: fused}

    def compute_output_shape(self, features_shape):
        features_shape = _pooled_shapes(features_shape)
        cond = _pick_modality(
            self, "conditioning", self.conditioning, list(features_shape)
        )
        out = {m: (s[0], s[-1]) for m, s in features_shape.items()}
        width = sum(s[-1] for m, s in features_shape.items() if m != cond)
        out[FUSED] = (features_shape[cond][0], width)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(conditioning=self.conditioning)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class GatedFusion(Fusion):
    """Gated fusion: one modality's sigmoid gate selects the others' features.

    The "Gated" row of the paper's Table 1, as in OGM-GE's code (Peng et
    al., 2022) that Table 1 follows: every modality is projected to `units`
    features, h_m = W_m · pool(x_m) + b_m, and the gating modality g opens
    or closes each feature of the others,

        fused = σ(h_g) ⊙ Σ_{m≠g} h_m.

    With two modalities this is OGM-GE's `GatedFusion` (`x_gate=True`)
    before its output layer, which here is the fused head; with more, the
    gate multiplies the sum of the other projected features. The unimodal
    heads read the plain pooled features.

    Args:
        units: int or `None`. Width of the projected features and of the
            fused feature. `None` takes the largest input width. Defaults
            to `None`.
        gate: str or `None`. The modality whose features make the gate.
            `None` takes the first modality of the input dict. Defaults to
            `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a tensor of shape
            `(batch, ..., d_m)` or a dict with a `"pooled"` entry; at least
            two modalities.

    Returns:
        A dict with the pooled `(batch, d_m)` feature of every modality and
        the fused `(batch, units)` feature under `"fused"`.

    Example:
    ```python
    fusion = keras_olm.GatedFusion(units=16, gate="audio")
    out = fusion({"audio": np.ones((2, 8)), "visual": np.ones((2, 4))})
    out["fused"].shape  # (2, 16)
    ```
    """

    def __init__(self, units=None, gate=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.gate = gate
        self.projections = {}

    def build(self, features_shape):
        self.check_modalities(features_shape)
        features_shape = _pooled_shapes(features_shape)
        modalities = list(features_shape)
        self._gate = _pick_modality(self, "gate", self.gate, modalities)
        units = self.units
        if units is None:
            units = max(s[-1] for s in features_shape.values())
        for m, shape in features_shape.items():
            dense = keras.layers.Dense(
                units, name=f"{m}_projection", dtype=self.dtype_policy
            )
            dense.build((shape[0], shape[-1]))
            self.projections[m] = dense
        self._units = units
        self.modalities = modalities
        self.built = True

    def call(self, features):
        self.check_modalities(features)
        self.check_built_modalities(features)
        pooled = {m: pool_features(x) for m, x in features.items()}
        projected = {m: self.projections[m](x) for m, x in pooled.items()}
        others = [h for m, h in projected.items() if m != self._gate]
        total = others[0]
        for h in others[1:]:
            total = total + h
        fused = ops.sigmoid(projected[self._gate]) * total
        return {**pooled, FUSED: fused}

    def compute_output_shape(self, features_shape):
        features_shape = _pooled_shapes(features_shape)
        out = {m: (s[0], s[-1]) for m, s in features_shape.items()}
        units = self.units
        if units is None:
            units = max(s[-1] for s in features_shape.values())
        out[FUSED] = (next(iter(features_shape.values()))[0], units)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, gate=self.gate)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class AttentionFusion(Fusion):
    """Attention fusion: a softmax over the modalities weighs their features.

    The "Attention" late fusion of the paper's Table 1 and Table 3. Each
    modality's pooled feature is projected to a common width, h_m =
    W_m · pool(x_m) + b_m (skipped when the widths already agree and
    `units` is `None`); an additive attention scores every modality and a
    softmax across the modalities weighs them, as the attention pooling of
    the paper's Eq. 4:

        e_m = vᵀ tanh(W h_m + b),   α = softmax_m(e),   fused = Σ_m α_m h_m.

    W, b and v are shared by the modalities, so the weights α_m depend on
    the sample: a modality whose feature looks informative gets more
    weight. `attention_weights` returns α. The unimodal heads read the
    plain pooled features.

    Args:
        units: int or `None`. Width of the projected features and of the
            fused feature. `None` keeps the features as they are when all
            widths agree and projects to the largest width otherwise.
            Defaults to `None`.
        attention_units: int or `None`. Width of the hidden layer of the
            attention score (the rows of W). `None` takes the fused width.
            Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a tensor of shape
            `(batch, ..., d_m)` or a dict with a `"pooled"` entry (sequence
            encoders); at least two modalities.

    Returns:
        A dict with the pooled `(batch, d_m)` feature of every modality and
        the fused `(batch, units)` feature under `"fused"`.

    Example:
    ```python
    fusion = keras_olm.AttentionFusion(units=16)
    feats = {"audio": np.ones((2, 8)), "visual": np.ones((2, 5, 4))}
    out = fusion(feats)
    out["fused"].shape  # (2, 16)
    fusion.attention_weights(feats).shape  # (2, 2), rows sum to 1
    ```
    """

    def __init__(self, units=None, attention_units=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.attention_units = attention_units
        self.projections = {}

    def _fused_width(self, features_shape):
        widths = [s[-1] for s in features_shape.values()]
        if self.units is not None:
            return self.units
        return max(widths)

    def build(self, features_shape):
        self.check_modalities(features_shape)
        features_shape = _pooled_shapes(features_shape)
        widths = {m: s[-1] for m, s in features_shape.items()}
        width = self._fused_width(features_shape)
        if self.units is not None or len(set(widths.values())) > 1:
            for m, shape in features_shape.items():
                dense = keras.layers.Dense(
                    width, name=f"{m}_projection", dtype=self.dtype_policy
                )
                dense.build((shape[0], shape[-1]))
                self.projections[m] = dense
        hidden = self.attention_units or width
        self.score_kernel = self.add_weight(
            name="score_kernel",
            shape=(width, hidden),
            initializer="glorot_uniform",
        )
        self.score_bias = self.add_weight(
            name="score_bias", shape=(hidden,), initializer="zeros"
        )
        self.score_vector = self.add_weight(
            name="score_vector",
            shape=(hidden,),
            initializer="glorot_uniform",
        )
        self.modalities = list(features_shape)
        self.built = True

    def _projected(self, features):
        self.check_modalities(features)
        self.check_built_modalities(features)
        pooled = {m: pool_features(x) for m, x in features.items()}
        projected = ops.stack(
            [
                self.projections[m](x) if m in self.projections else x
                for m, x in pooled.items()
            ],
            axis=1,
        )  # (batch, M, width)
        hidden = ops.tanh(
            ops.matmul(projected, self.score_kernel) + self.score_bias
        )
        scores = ops.matmul(hidden, self.score_vector)  # (batch, M)
        return pooled, projected, ops.softmax(scores, axis=-1)

    def attention_weights(self, features):
        """The weights α of the modalities, shape `(batch, M)`.

        Args:
            features: dict of encoder outputs, as for `call`.

        Returns:
            A tensor whose columns follow the order of the input dict and
            whose rows sum to 1.
        """
        return self._projected(features)[2]

    def call(self, features):
        pooled, projected, weights = self._projected(features)
        fused = ops.sum(projected * weights[..., None], axis=1)
        return {**pooled, FUSED: fused}

    def compute_output_shape(self, features_shape):
        features_shape = _pooled_shapes(features_shape)
        out = {m: (s[0], s[-1]) for m, s in features_shape.items()}
        width = self._fused_width(features_shape)
        out[FUSED] = (next(iter(features_shape.values()))[0], width)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, attention_units=self.attention_units)
        return config
