"""IRFB: the Intermediate Representation Fusion Block (§3.1, Eq. 2-4).

T_b learnable bottleneck tokens z_b are the message hub between the
modalities. At every layer l they read each modality's layer-l tokens by
cross-attention (Eq. 2), gate what they read (Eq. 3) and pool the gated
readings into their update (Eq. 4). The unimodal streams are only read,
never written: every modality's encoder learns alone (the "decoupling"),
and only the fused head sees the bottleneck tokens.
"""

import keras
from keras import ops

from keras_olm.layers.base import FUSED
from keras_olm.layers.base import Fusion
from keras_olm.layers.transformer import attention_mask

VARIANTS = ("paper", "authors")
POOLINGS = ("sequence", "per_token")


def attention_pool_update(z_b, z_mb, scores, pooling="sequence"):
    """The bottleneck update of Eq. 4 from its attention scores.

    z_b^[l+1] = z_b^[l] + Softmax(v^T tanh(z_g W + b)) · z_g, with
    z_g = Concat(z_{m->b}) the temporal concatenation over modalities.

    Args:
        z_b: tensor `(batch, T_b, d)`. Bottleneck tokens at layer l.
        z_mb: tensor `(batch, M, T_b, d)`. The gated cross-attended tokens
            z_{m->b} of every modality.
        scores: tensor `(batch, M, T_b)`. v^T tanh(z_g W + b) per token.
        pooling: str. `"sequence"`: the softmax runs over all M·T_b tokens
            of z_g and the pooled vector (batch, d) is added to every
            bottleneck token (Eq. 4 as written). `"per_token"`: the
            softmax runs over the M modalities separately for each
            bottleneck token i, so token i is updated by its own pooled
            vector Σ_m α_mi z_{m->b,i}.

    Returns:
        z_b^[l+1], a tensor `(batch, T_b, d)`.
    """
    z_b, z_mb, scores = (ops.convert_to_tensor(t) for t in (z_b, z_mb, scores))
    if pooling == "sequence":
        batch, m_count, tokens = ops.shape(scores)
        flat = ops.reshape(scores, (batch, m_count * tokens))
        alpha = ops.reshape(
            ops.softmax(flat, axis=-1), (batch, m_count, tokens)
        )
        pooled = ops.einsum("bmt,bmtd->bd", alpha, z_mb)
        return z_b + ops.expand_dims(pooled, 1)
    if pooling == "per_token":
        alpha = ops.softmax(scores, axis=1)
        return z_b + ops.einsum("bmt,bmtd->btd", alpha, z_mb)
    raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")


@keras.saving.register_keras_serializable(package="keras_olm")
class IRFB(Fusion):
    """Intermediate Representation Fusion Block (Zong et al., 2024, §3.1).

    A fusion layer for `BalancedMultimodalModel(encoders, fusion=IRFB())`
    whose encoders are `SequenceEncoder`s with the same number of layers L
    and width d. T_b learnable bottleneck tokens z_b read every layer of
    every modality; for l = 1..L and each modality m:

        z_{m->b} = LayerNorm(z_b + Att(z_b W_Q^m, z_m^l W_K^m, z_m^l W_V^m))
                                                                   (Eq. 2)
        g_{m->b} = sigmoid(W_mb^l [cls_1^l, ..., cls_M^l, z_b^l] + b_mb^l)
        z_{m->b} = LayerNorm(z_{m->b} + g_{m->b} ⊙ z_{m->b})       (Eq. 3)
        z_b^{l+1} = z_b^l + Softmax(v^T tanh(z_g W + b)) · z_g      (Eq. 4)

    with z_g the concatenation of the z_{m->b} along the tokens. The
    cross-attention respects each modality's padding mask. The paper's
    z_v, z_a in the gate are read as the modalities' layer-l [CLS] tokens,
    concatenated (in sorted modality order) with each bottleneck token.
    The fused feature is the mean of the final bottleneck tokens (the
    paper's temporal pooling before the heads); each modality's feature is
    its encoder's `"pooled"` [CLS], untouched by the fusion, so the
    unimodal heads see purely unimodal features while the fused head's
    loss still trains every encoder through the hidden states it reads.

    `variant="authors"` follows the authors' released code instead: the
    gate of modality m reads [cls_m, the other modalities' cls] (no z_b),
    the update is s = Σ_m z_{m->b}, z_b^{l+1} = LayerNorm(s + FFN(s))
    (no attention pooling), and the fused feature is again the mean over
    the bottleneck tokens.

    Args:
        num_bottlenecks: int. T_b. Defaults to `4` (the authors use 12).
        num_heads: int. Heads of the cross-attention; must divide d.
            Defaults to `4`.
        variant: str. `"paper"` (Eq. 2-4) or `"authors"` (their code).
            Defaults to `"paper"`.
        pooling: str. How Eq. 4 pools (paper variant only): `"sequence"`,
            one softmax over all M·T_b tokens of z_g and the same pooled
            vector added to every bottleneck token, as Eq. 4 is written;
            `"per_token"`, a softmax over the modalities for each
            bottleneck token. Defaults to `"sequence"`.
        intermediate_dim: int or `None`. Width of the attention-pooling
            projection W (paper) or of the feed-forward (authors). `None`:
            d. Defaults to `None`.
        dropout: float. Dropout on the cross-attention weights and on the
            attended values. Defaults to `0.0`.
        bottleneck_initializer: initializer of z_b. The paper initializes
            them randomly, the authors' code with zeros. Defaults to a
            truncated normal with standard deviation 0.02.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        features: dict from modality name to a `SequenceEncoder` output
            (`"pooled"`, `"hidden_states"`, `"mask"`).
        training: bool. Dropout on when `True`.

    Returns:
        A dict with each modality's `(batch, d)` pooled [CLS] and the fused
        `(batch, d)` feature under `"fused"`.

    Example:
    ```python
    encoders = {
        m: keras_olm.layers.SequenceEncoder(
            hidden_dim=32, num_layers=2, num_heads=4, intermediate_dim=64
        )
        for m in ("audio", "visual")
    }
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=6, fusion=keras_olm.layers.IRFB()
    )
    ```
    """

    def __init__(
        self,
        num_bottlenecks=4,
        num_heads=4,
        variant="paper",
        pooling="sequence",
        intermediate_dim=None,
        dropout=0.0,
        bottleneck_initializer=None,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(
                f"variant must be one of {VARIANTS}; got {variant!r}"
            )
        if pooling not in POOLINGS:
            raise ValueError(
                f"pooling must be one of {POOLINGS}; got {pooling!r}"
            )
        if int(num_bottlenecks) < 1:
            raise ValueError(
                f"num_bottlenecks must be >= 1; got {num_bottlenecks}"
            )
        self.num_bottlenecks = int(num_bottlenecks)
        self.num_heads = int(num_heads)
        self.variant = variant
        self.pooling = pooling
        self.intermediate_dim = (
            None if intermediate_dim is None else int(intermediate_dim)
        )
        self.dropout = float(dropout)
        if bottleneck_initializer is None:
            bottleneck_initializer = keras.initializers.TruncatedNormal(
                stddev=0.02
            )
        self.bottleneck_initializer = keras.initializers.get(
            bottleneck_initializer
        )
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, features_shape):
        modalities, layers, d = self.check_streams(features_shape)
        if layers < 1:
            raise ValueError(
                f"{self.name}: IRFB reads the encoders' layer outputs; use "
                "SequenceEncoders with num_layers >= 1 (MBT takes "
                "num_layers=0)."
            )
        if d % self.num_heads:
            raise ValueError(
                f"{self.name}: num_heads={self.num_heads} must divide the "
                f"encoders' width {d}."
            )
        self.modalities = modalities
        self.num_layers = layers
        self.width = d
        m_count = len(modalities)
        inner = self.intermediate_dim or d
        tb = self.num_bottlenecks
        token_shape = (None, tb, d)
        self.bottlenecks = self.add_weight(
            name="bottleneck_tokens",
            shape=(tb, d),
            initializer=self.bottleneck_initializer,
        )

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name=name
            )
            layer.build(token_shape)
            return layer

        # Flat lists, index l * M + i for layer l and modality i.
        self.cross_attention = []
        self.attention_norms = []
        self.gates = []
        self.gate_norms = []
        gate_in = (m_count + 1) * d if self.variant == "paper" else m_count * d
        for layer_index in range(layers):
            for m in modalities:
                att = keras.layers.MultiHeadAttention(
                    self.num_heads,
                    key_dim=d // self.num_heads,
                    dropout=self.dropout,
                    name=f"layer{layer_index + 1}_{m}_cross_attention",
                )
                stream = features_shape[m]["hidden_states"]
                att.build(token_shape, (stream[0], stream[2], d))
                self.cross_attention.append(att)
                self.attention_norms.append(
                    norm(f"layer{layer_index + 1}_{m}_attention_norm")
                )
                gate = keras.layers.Dense(
                    d, "sigmoid", name=f"layer{layer_index + 1}_{m}_gate"
                )
                gate.build((None, tb, gate_in))
                self.gates.append(gate)
                self.gate_norms.append(
                    norm(f"layer{layer_index + 1}_{m}_gate_norm")
                )
        self.pool_projections = []
        self.pool_scores = []
        self.ffn_inner = []
        self.ffn_outer = []
        self.update_norms = []
        for layer_index in range(layers):
            if self.variant == "paper":
                proj = keras.layers.Dense(
                    inner,
                    "tanh",
                    name=f"layer{layer_index + 1}_pool_projection",
                )
                proj.build((None, m_count, tb, d))
                score = keras.layers.Dense(
                    1, use_bias=False, name=f"layer{layer_index + 1}_pool_score"
                )
                score.build((None, m_count, tb, inner))
                self.pool_projections.append(proj)
                self.pool_scores.append(score)
            else:
                ffn_in = keras.layers.Dense(
                    inner,
                    "gelu",
                    name=f"layer{layer_index + 1}_ffn_intermediate",
                )
                ffn_in.build(token_shape)
                ffn_out = keras.layers.Dense(
                    d, name=f"layer{layer_index + 1}_ffn_output"
                )
                ffn_out.build((None, tb, inner))
                self.ffn_inner.append(ffn_in)
                self.ffn_outer.append(ffn_out)
                self.update_norms.append(
                    norm(f"layer{layer_index + 1}_update_norm")
                )
        self.dropout_layer = keras.layers.Dropout(self.dropout)
        self.built = True

    def _gate_input(self, cls, z_b, i):
        """What the gate of modality i reads (Eq. 3, or the authors')."""
        if self.variant == "paper":
            parts = list(cls)
        else:
            parts = [cls[i]] + [c for j, c in enumerate(cls) if j != i]
        tokens = ops.zeros_like(z_b[..., :1])
        parts = [tokens + ops.expand_dims(c, 1) for c in parts]
        if self.variant == "paper":
            parts.append(z_b)
        return ops.concatenate(parts, axis=-1)

    def call(self, features, training=None):
        self.check_built_modalities(features)
        streams = [features[m]["hidden_states"] for m in self.modalities]
        masks = [features[m]["mask"] for m in self.modalities]
        first = streams[0]
        z_b = ops.zeros_like(first[:, 0, :1, :1]) + ops.cast(
            self.bottlenecks, first.dtype
        )
        query_mask = ops.ones_like(z_b[..., 0], dtype="bool")
        m_count = len(self.modalities)
        for layer_index in range(self.num_layers):
            # Layer l + 1 of every stream: read, never written.
            tokens = [s[:, layer_index + 1] for s in streams]
            cls = [t[:, 0, :] for t in tokens]
            readings = []
            for i in range(m_count):
                k = layer_index * m_count + i
                att = self.cross_attention[k](
                    z_b,
                    tokens[i],
                    attention_mask=attention_mask(query_mask, masks[i]),
                    training=training,
                )
                att = self.dropout_layer(att, training=training)
                z_mb = self.attention_norms[k](z_b + att)  # Eq. 2
                gate = self.gates[k](self._gate_input(cls, z_b, i))
                z_mb = self.gate_norms[k](z_mb + gate * z_mb)  # Eq. 3
                readings.append(z_mb)
            if self.variant == "paper":
                z_g = ops.stack(readings, axis=1)  # (batch, M, T_b, d)
                scores = self.pool_scores[layer_index](
                    self.pool_projections[layer_index](z_g)
                )
                z_b = attention_pool_update(  # Eq. 4
                    z_b, z_g, scores[..., 0], self.pooling
                )
            else:
                s = readings[0]
                for r in readings[1:]:
                    s = s + r
                h = self.ffn_outer[layer_index](self.ffn_inner[layer_index](s))
                h = self.dropout_layer(h, training=training)
                z_b = self.update_norms[layer_index](s + h)
        out = {m: features[m]["pooled"] for m in features}
        out[FUSED] = ops.mean(z_b, axis=1)
        return out

    def compute_output_shape(self, features_shape):
        modalities, _, d = self.check_streams(features_shape)
        out = {m: tuple(features_shape[m]["pooled"]) for m in features_shape}
        batch = features_shape[modalities[0]]["pooled"][0]
        out[FUSED] = (batch, d)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bottlenecks=self.num_bottlenecks,
            num_heads=self.num_heads,
            variant=self.variant,
            pooling=self.pooling,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            bottleneck_initializer=keras.initializers.serialize(
                self.bottleneck_initializer
            ),
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
