"""MBT: the attention bottleneck of Nagrani et al. (2021), not decoupled.

The ablation baseline of Table 3 (OLM-T-MBT). Shared bottleneck tokens are
appended to every modality's token sequence inside each transformer layer;
each modality's layer updates its own tokens and a copy of the bottleneck,
and the copies are averaged. Cross-modal information therefore flows back
into the unimodal streams, unlike `IRFB`.
"""

import keras
from keras import ops

from keras_olm.layers.base import FUSED
from keras_olm.layers.base import Fusion
from keras_olm.layers.transformer import TransformerLayer

FUSED_FROM = ("bottleneck", "cls")


@keras.saving.register_keras_serializable(package="keras_olm")
class MBT(Fusion):
    """Multimodal bottleneck transformer fusion (Nagrani et al., 2021).

    A fusion layer for `BalancedMultimodalModel(encoders, fusion=MBT(...))`
    whose encoders are `SequenceEncoder`s of the same width d. Its input
    tokens are each encoder's last hidden states with their padding mask:
    with `SequenceEncoder(num_layers=0)` these are the embeddings (the
    [CLS]-prepended, position-embedded sequence) and all transformer layers
    live in MBT, as in Nagrani et al.; with `num_layers > 0` MBT runs on top
    of the unimodal layers (late-stage bottleneck fusion). For each of its
    `num_layers` layers and each modality m:

        [z_m^{l+1} || ẑ_b,m^{l+1}] = Transformer_m^l([z_m^l || z_b^l])
        z_b^{l+1} = mean over m of ẑ_b,m^{l+1}

    The bottleneck tokens are always attended; padded tokens never are.

    Args:
        num_layers: int. Fusion transformer layers (>= 1).
        num_heads: int. Attention heads; must divide d.
        intermediate_dim: int. Feed-forward width.
        num_bottlenecks: int. Bottleneck tokens. Defaults to `4`.
        dropout: float. Defaults to `0.0`.
        fused_from: str. The fused feature: `"bottleneck"`, the mean of the
            final bottleneck tokens; `"cls"`, the mean of the modalities'
            final [CLS] tokens (Nagrani et al. average the per-modality
            logits instead). Defaults to `"bottleneck"`.
        activation: str. Defaults to `"gelu"`.
        normalize_first: bool. Pre-LN layers when `True`. Defaults to
            `False`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a `SequenceEncoder` output.
        training: bool. Dropout on when `True`.

    Returns:
        A dict with each modality's `(batch, d)` [CLS] token after fusion
        and the fused `(batch, d)` feature under `"fused"`.

    Example:
    ```python
    encoders = {
        m: keras_olm.layers.SequenceEncoder(
            hidden_dim=32, num_layers=0, num_heads=4, intermediate_dim=64
        )
        for m in ("audio", "visual")
    }
    fusion = keras_olm.layers.MBT(num_layers=2, num_heads=4,
                                  intermediate_dim=64)
    model = keras_olm.BalancedMultimodalModel(encoders, 6, fusion=fusion)
    ```
    """

    needs_sequence_encoders = True

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        num_bottlenecks=4,
        dropout=0.0,
        fused_from="bottleneck",
        activation="gelu",
        normalize_first=False,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        if int(num_bottlenecks) < 1:
            raise ValueError(
                f"num_bottlenecks must be >= 1; got {num_bottlenecks}"
            )
        if fused_from not in FUSED_FROM:
            raise ValueError(
                f"fused_from must be one of {FUSED_FROM}; got {fused_from!r}"
            )
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.num_bottlenecks = int(num_bottlenecks)
        self.dropout = float(dropout)
        self.fused_from = fused_from
        self.activation = activation
        self.normalize_first = bool(normalize_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, features_shape):
        modalities, _, d = self.check_streams(features_shape)
        if d % self.num_heads:
            raise ValueError(
                f"{self.name}: num_heads={self.num_heads} must divide the "
                f"encoders' width {d}."
            )
        self.modalities = modalities
        self.width = d
        self.bottlenecks = self.add_weight(
            name="bottleneck_tokens",
            shape=(self.num_bottlenecks, d),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        # Flat list, index l * M + i for layer l and modality i.
        self.fusion_layers = []
        tb = self.num_bottlenecks
        for layer_index in range(self.num_layers):
            for m in modalities:
                tokens = features_shape[m]["hidden_states"][2]
                length = None if tokens is None else tokens + tb
                layer = TransformerLayer(
                    self.num_heads,
                    self.intermediate_dim,
                    dropout=self.dropout,
                    activation=self.activation,
                    normalize_first=self.normalize_first,
                    layer_norm_epsilon=self.layer_norm_epsilon,
                    name=f"layer{layer_index + 1}_{m}",
                    dtype=self.dtype_policy,
                )
                layer.build((None, length, d))
                self.fusion_layers.append(layer)
        if self.normalize_first:
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                name="final_norm",
                dtype=self.dtype_policy,
            )
            self.final_norm.build((None, None, d))
        self.built = True

    def call(self, features, training=None):
        self.check_built_modalities(features)
        streams = [features[m]["hidden_states"][:, -1] for m in self.modalities]
        masks = [features[m]["mask"] for m in self.modalities]
        first = streams[0]
        tb = self.num_bottlenecks
        z_b = ops.zeros_like(first[:, :1, :1]) + ops.cast(
            self.bottlenecks, first.dtype
        )
        b_mask = ops.ones_like(z_b[..., 0], dtype="bool")
        masks = [ops.concatenate([mk, b_mask], axis=1) for mk in masks]
        m_count = len(self.modalities)
        for layer_index in range(self.num_layers):
            copies = []
            for i in range(m_count):
                joined = ops.concatenate([streams[i], z_b], axis=1)
                out = self.fusion_layers[layer_index * m_count + i](
                    joined, padding_mask=masks[i], training=training
                )
                streams[i] = out[:, :-tb]
                copies.append(out[:, -tb:])
            z_b = ops.mean(ops.stack(copies, axis=0), axis=0)
        if self.normalize_first:
            streams = [self.final_norm(s) for s in streams]
            z_b = self.final_norm(z_b)
        out = {m: streams[i][:, 0] for i, m in enumerate(self.modalities)}
        out = {m: out[m] for m in features}
        if self.fused_from == "bottleneck":
            out[FUSED] = ops.mean(z_b, axis=1)
        else:
            out[FUSED] = ops.mean(
                ops.stack([streams[i][:, 0] for i in range(m_count)], 0), 0
            )
        return out

    def compute_output_shape(self, features_shape):
        modalities, _, d = self.check_streams(features_shape)
        batch = features_shape[modalities[0]]["pooled"][0]
        out = {m: (features_shape[m]["pooled"][0], d) for m in features_shape}
        out[FUSED] = (batch, d)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            num_bottlenecks=self.num_bottlenecks,
            dropout=self.dropout,
            fused_from=self.fused_from,
            activation=self.activation,
            normalize_first=self.normalize_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
