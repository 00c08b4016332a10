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


class _BottleneckBlock(keras.layers.Layer):
    """What both IRFB blocks share: per-modality cross-attention and gates.

    For each modality m the bottleneck tokens cross-attend to m's layer-l
    tokens (Eq. 2) and a gate scales what they read (Eq. 3). Subclasses
    say what the gate reads (`_gate_cls`, `gate_reads_bottleneck`) and
    how the readings update the bottleneck (`build_update`, `update`).

    Building runs `BUILD_STEPS` in order. `IRFB` runs each step for all its
    blocks before the next step: Keras draws a sublayer's seeds when the
    sublayer is made, so this order decides the initial weights that a
    seed gives.
    """

    BUILD_STEPS = ("build_readers", "build_update", "build_dropout")
    gate_reads_bottleneck = True

    def __init__(
        self,
        num_heads,
        intermediate_dim=None,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.intermediate_dim = (
            None if intermediate_dim is None else int(intermediate_dim)
        )
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, bottleneck_shape, tokens_shape):
        for step in self.BUILD_STEPS:
            getattr(self, step)(bottleneck_shape, tokens_shape)

    def build_readers(self, bottleneck_shape, tokens_shape):
        """Makes each modality's cross-attention and gate (Eq. 2-3)."""
        self.modalities = sorted(tokens_shape)
        tb, d = bottleneck_shape[-2], bottleneck_shape[-1]
        if d % self.num_heads:
            raise ValueError(
                f"{self.name}: num_heads={self.num_heads} must divide the "
                f"width {d}."
            )
        token_shape = (None, tb, d)
        gate_in = (len(self.modalities) + self.gate_reads_bottleneck) * d
        self.cross_attention = {}
        self.attention_norms = {}
        self.gates = {}
        self.gate_norms = {}
        for m in self.modalities:
            att = keras.layers.MultiHeadAttention(
                self.num_heads,
                key_dim=d // self.num_heads,
                dropout=self.dropout,
                name=f"{m}_cross_attention",
                dtype=self.dtype_policy,
            )
            att.build(token_shape, tokens_shape[m])
            self.cross_attention[m] = att
            self.attention_norms[m] = self._norm(
                f"{m}_attention_norm", token_shape
            )
            gate = keras.layers.Dense(
                d, "sigmoid", name=f"{m}_gate", dtype=self.dtype_policy
            )
            gate.build((None, tb, gate_in))
            self.gates[m] = gate
            self.gate_norms[m] = self._norm(f"{m}_gate_norm", token_shape)

    def build_update(self, bottleneck_shape, tokens_shape):
        raise NotImplementedError

    def build_dropout(self, bottleneck_shape, tokens_shape):
        """Makes the dropout on the attended values."""
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )

    def _norm(self, name, shape):
        layer = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            name=name,
            dtype=self.dtype_policy,
        )
        layer.build(shape)
        return layer

    def _gate_cls(self, cls, index):
        """The [CLS] tokens the gate of modality `index` reads, in order."""
        raise NotImplementedError

    def _gate_input(self, cls, z_b, index):
        """The gate's input at every bottleneck token, `(batch, T_b, ·)`."""
        tokens = ops.zeros_like(z_b[..., :1])
        parts = [
            tokens + ops.expand_dims(c, 1) for c in self._gate_cls(cls, index)
        ]
        if self.gate_reads_bottleneck:
            parts.append(z_b)
        return ops.concatenate(parts, axis=-1)

    def update(self, z_b, readings, training=None):
        """z_b^{l+1} from z_b^l and the gated readings z_{m->b}."""
        raise NotImplementedError

    def call(self, bottleneck, tokens, padding_masks=None, training=None):
        z_b = bottleneck
        query_mask = ops.ones_like(z_b[..., 0], dtype="bool")
        cls = [tokens[m][:, 0, :] for m in self.modalities]
        readings = []
        for index, m in enumerate(self.modalities):
            mask = None
            if padding_masks is not None:
                mask = attention_mask(query_mask, padding_masks[m])
            att = self.cross_attention[m](
                z_b, tokens[m], attention_mask=mask, training=training
            )
            att = self.dropout_layer(att, training=training)
            z_mb = self.attention_norms[m](z_b + att)  # Eq. 2
            gate = self.gates[m](self._gate_input(cls, z_b, index))
            z_mb = self.gate_norms[m](z_mb + gate * z_mb)  # Eq. 3
            readings.append(z_mb)
        return self.update(z_b, readings, training=training)

    def compute_output_shape(self, bottleneck_shape, tokens_shape):
        return tuple(bottleneck_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class IRFBBlock(_BottleneckBlock):
    """One layer l of IRFB: the bottleneck tokens read every modality (Eq. 2-4).

    For each modality m, the bottleneck tokens z_b^l cross-attend to m's
    layer-l tokens z_m^l (Eq. 2) and a gate scales what they read (Eq. 3):

        z_{m->b} = LayerNorm(z_b + Att(z_b W_Q^m, z_m^l W_K^m, z_m^l W_V^m))
                                                                   (Eq. 2)
        g_{m->b} = sigmoid(W_mb^l [cls_1^l, ..., cls_M^l, z_b^l] + b_mb^l)
        z_{m->b} = LayerNorm(z_{m->b} + g_{m->b} ⊙ z_{m->b})       (Eq. 3)

    with cls_m^l the first token of z_m^l, concatenated in sorted modality
    order with each bottleneck token. The readings z_g = [z_{1->b}, ...,
    z_{M->b}] update the bottleneck by attention pooling (Eq. 4, see
    `attention_pool_update`):

        z_b^{l+1} = z_b^l + Softmax(v^T tanh(z_g W + b)) · z_g      (Eq. 4)

    Every modality has its own cross-attention, gate and layer
    normalizations, held in dicts keyed by modality (`cross_attention`,
    `attention_norms`, `gates`, `gate_norms`); W, b and v
    (`pool_projection`, `pool_score`) are shared. `IRFB` stacks one block
    per encoder layer.

    Args:
        num_heads: int. Heads of the cross-attention; must divide d.
        intermediate_dim: int or `None`. Width of the attention-pooling
            projection W. `None`: d. Defaults to `None`.
        pooling: str. `"sequence"`: one softmax over all M·T_b tokens of
            z_g and the same pooled vector added to every bottleneck token,
            as Eq. 4 is written; `"per_token"`: a softmax over the
            modalities for each bottleneck token. Defaults to `"sequence"`.
        dropout: float. Dropout on the cross-attention weights and on the
            attended values. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        bottleneck: tensor `(batch, T_b, d)`. The bottleneck tokens z_b^l.
        tokens: dict from modality name to its layer-l tokens
            `(batch, T_m, d)`, [CLS] first.
        padding_masks: dict from modality name to a boolean `(batch, T_m)`
            mask, `True` for tokens that may be attended, or `None` to
            attend every token. Defaults to `None`.
        training: bool. Dropout on when `True`.

    Returns:
        z_b^{l+1}, a tensor `(batch, T_b, d)`.

    Example:
    ```python
    block = keras_olm.layers.IRFBBlock(num_heads=2)
    tokens = {"audio": np.ones((2, 6, 8)), "visual": np.ones((2, 3, 8))}
    z_b = block(np.zeros((2, 4, 8)), tokens)
    z_b.shape  # (2, 4, 8)
    ```
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim=None,
        pooling="sequence",
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(
            num_heads,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            **kwargs,
        )
        if pooling not in POOLINGS:
            raise ValueError(
                f"pooling must be one of {POOLINGS}; got {pooling!r}"
            )
        self.pooling = pooling

    def build_update(self, bottleneck_shape, tokens_shape):
        """Makes the attention pooling's W, b and v (Eq. 4)."""
        tb, d = bottleneck_shape[-2], bottleneck_shape[-1]
        inner = self.intermediate_dim or d
        m_count = len(self.modalities)
        self.pool_projection = keras.layers.Dense(
            inner, "tanh", name="pool_projection", dtype=self.dtype_policy
        )
        self.pool_projection.build((None, m_count, tb, d))
        self.pool_score = keras.layers.Dense(
            1, use_bias=False, name="pool_score", dtype=self.dtype_policy
        )
        self.pool_score.build((None, m_count, tb, inner))

    def _gate_cls(self, cls, index):
        return list(cls)

    def update(self, z_b, readings, training=None):
        z_g = ops.stack(readings, axis=1)  # (batch, M, T_b, d)
        scores = self.pool_score(self.pool_projection(z_g))
        return attention_pool_update(  # Eq. 4
            z_b, z_g, scores[..., 0], self.pooling
        )

    def get_config(self):
        config = super().get_config()
        config.update(pooling=self.pooling)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class AuthorsIRFBBlock(_BottleneckBlock):
    """One layer of IRFB as the authors' released code computes it.

    The cross-attention is Eq. 2, as in `IRFBBlock`. The gate of modality m
    reads [cls_m, the other modalities' cls] (no z_b), and the readings
    are summed and passed through a feed-forward block instead of the
    attention pooling of Eq. 4:

        g_{m->b} = sigmoid(W_mb^l [cls_m^l, cls_{j≠m}^l] + b_mb^l)
        s = Σ_m z_{m->b},   z_b^{l+1} = LayerNorm(s + FFN(s))

    Args:
        num_heads: int. Heads of the cross-attention; must divide d.
        intermediate_dim: int or `None`. Width of the feed-forward block.
            `None`: d. Defaults to `None`.
        dropout: float. Dropout on the cross-attention weights, on the
            attended values and after the feed-forward block. Defaults to
            `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        As `IRFBBlock`: `bottleneck` z_b^l, the layer-l `tokens` and the
        `padding_masks` of every modality, and `training`.

    Returns:
        z_b^{l+1}, a tensor `(batch, T_b, d)`.

    Example:
    ```python
    # IRFB(variant="authors") stacks one such block per encoder layer.
    block = keras_olm.layers.AuthorsIRFBBlock(num_heads=2, intermediate_dim=16)
    tokens = {"audio": np.ones((2, 6, 8)), "visual": np.ones((2, 3, 8))}
    masks = {m: np.ones(t.shape[:2], bool) for m, t in tokens.items()}
    block(np.zeros((2, 4, 8)), tokens, masks).shape  # (2, 4, 8)
    ```
    """

    gate_reads_bottleneck = False

    def build_update(self, bottleneck_shape, tokens_shape):
        """Makes the feed-forward block and its layer normalization."""
        tb, d = bottleneck_shape[-2], bottleneck_shape[-1]
        inner = self.intermediate_dim or d
        token_shape = (None, tb, d)
        self.ffn_intermediate = keras.layers.Dense(
            inner, "gelu", name="ffn_intermediate", dtype=self.dtype_policy
        )
        self.ffn_intermediate.build(token_shape)
        self.ffn_output = keras.layers.Dense(
            d, name="ffn_output", dtype=self.dtype_policy
        )
        self.ffn_output.build((None, tb, inner))
        self.update_norm = self._norm("update_norm", token_shape)

    def _gate_cls(self, cls, index):
        return [cls[index]] + [c for j, c in enumerate(cls) if j != index]

    def update(self, z_b, readings, training=None):
        s = readings[0]
        for r in readings[1:]:
            s = s + r
        h = self.ffn_output(self.ffn_intermediate(s))
        h = self.dropout_layer(h, training=training)
        return self.update_norm(s + h)


BLOCKS = {"paper": IRFBBlock, "authors": AuthorsIRFBBlock}
VARIANTS = tuple(BLOCKS)


@keras.saving.register_keras_serializable(package="keras_olm")
class IRFB(Fusion):
    """Intermediate Representation Fusion Block (Zong et al., 2024, §3.1).

    A fusion layer for `BalancedMultimodalModel(encoders, fusion=IRFB())`
    whose encoders are `SequenceEncoder`s with the same number of layers L
    and width d. T_b learnable bottleneck tokens z_b read every layer of
    every modality: for l = 1..L one `IRFBBlock` cross-attends from z_b to
    each modality's layer-l tokens (Eq. 2), gates the readings (Eq. 3) and
    pools them into the update z_b^{l+1} (Eq. 4):

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

    `variant="authors"` stacks `AuthorsIRFBBlock`s, which follow the
    authors' released code instead: the gate of modality m reads [cls_m,
    the other modalities' cls] (no z_b), the update is s = Σ_m z_{m->b},
    z_b^{l+1} = LayerNorm(s + FFN(s)) (no attention pooling), and the
    fused feature is again the mean over the bottleneck tokens.

    Args:
        num_bottlenecks: int. T_b. Defaults to `4` (the authors use 12).
        num_heads: int. Heads of the cross-attention; must divide d.
            Defaults to `4`.
        variant: str. `"paper"` (Eq. 2-4, `IRFBBlock`) or `"authors"`
            (their code, `AuthorsIRFBBlock`). Defaults to `"paper"`.
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

    needs_sequence_encoders = True

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

    def _make_block(self, index):
        kwargs = dict(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            name=f"layer{index + 1}",
            dtype=self.dtype_policy,
        )
        if self.variant == "paper":
            kwargs["pooling"] = self.pooling
        return BLOCKS[self.variant](**kwargs)

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
        self.bottlenecks = self.add_weight(
            name="bottleneck_tokens",
            shape=(self.num_bottlenecks, d),
            initializer=self.bottleneck_initializer,
        )
        bottleneck_shape = (None, self.num_bottlenecks, d)
        tokens_shape = {}
        for m in modalities:
            batch, _, length, _ = features_shape[m]["hidden_states"]
            tokens_shape[m] = (batch, length, d)
        self.blocks = [self._make_block(i) for i in range(layers)]
        # Each build step runs for every block before the next step (every
        # block's readers, then every block's update, then its dropout):
        # this order of making the sublayers decides the initial weights
        # that a seed gives.
        for step in _BottleneckBlock.BUILD_STEPS:
            for block in self.blocks:
                with keras.name_scope(block.name):
                    getattr(block, step)(bottleneck_shape, tokens_shape)
                block.built = True
        self.built = True

    def call(self, features, training=None):
        self.check_built_modalities(features)
        streams = {m: features[m]["hidden_states"] for m in self.modalities}
        masks = {m: features[m]["mask"] for m in self.modalities}
        first = streams[self.modalities[0]]
        z_b = ops.zeros_like(first[:, 0, :1, :1]) + ops.cast(
            self.bottlenecks, first.dtype
        )
        for index, block in enumerate(self.blocks):
            # Layer index + 1 of every stream: read, never written.
            tokens = {m: s[:, index + 1] for m, s in streams.items()}
            z_b = block(z_b, tokens, masks, training=training)
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
