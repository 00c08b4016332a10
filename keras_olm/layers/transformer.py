"""Unimodal transformer encoder for sequence inputs (§3.1, Eq. 1).

`SequenceEncoder` turns a feature sequence `(batch, T, f)` into the token
representations that IRFB and MBT fuse: it projects the features, prepends
a learnable [CLS] token, adds learned positions and runs standard
transformer layers, returning every layer's hidden states, the final [CLS]
and the padding mask (with the [CLS] position always valid).

Padding is read from the values: a timestep whose features all equal
`mask_value` is padding, so model inputs stay plain, zero-padded tensors.
The mask is shifted by one for the prepended [CLS] token (the authors' code
applies the unshifted mask to the [CLS]-prepended sequence, which hides the
last real token and lets the first padding slot be attended).
"""

import keras
from keras import ops


def timestep_mask(x, mask_value=0.0):
    """Which timesteps of `x` hold data: `(batch, T)` booleans.

    Args:
        x: tensor `(batch, T, f)`.
        mask_value: float or `None`. A timestep whose features all equal
            it is padding. `None`: every timestep is valid.

    Returns:
        A boolean tensor `(batch, T)`, `True` where a timestep is valid.
    """
    if mask_value is None:
        return ops.ones_like(x[..., 0], dtype="bool")
    return ops.any(ops.not_equal(x, mask_value), axis=-1)


def with_cls(mask):
    """The padding mask of a [CLS]-prepended sequence: `(batch, 1 + T)`.

    Position 0 (the [CLS] token) is always valid; position t + 1 is valid
    where timestep t of the input is.
    """
    return ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=1)


def attention_mask(query_mask, key_mask):
    """`(batch, Tq, Tk)` attention mask from per-token masks.

    Every query may attend every valid key; `keras.layers.MultiHeadAttention`
    takes this shape. Padded queries attend too (their outputs are ignored
    downstream), so no softmax row is ever fully masked.
    """
    q = ops.expand_dims(ops.ones_like(query_mask, dtype="bool"), -1)
    k = ops.expand_dims(ops.cast(key_mask, "bool"), -2)
    return ops.logical_and(q, k)


@keras.saving.register_keras_serializable(package="keras_olm")
class TransformerLayer(keras.layers.Layer):
    """One standard transformer layer (Vaswani et al., 2017).

    Self-attention and a two-layer feed-forward block, each with a residual
    connection and layer normalization, after the block (post-LN, as in the
    original transformer) or before it (pre-LN).

    Args:
        num_heads: int. Attention heads; must divide the input width.
        intermediate_dim: int. Width of the feed-forward block.
        dropout: float. Dropout on the attention weights and after each
            block. Defaults to `0.0`.
        activation: str. Feed-forward activation. Defaults to `"gelu"`.
        normalize_first: bool. Pre-LN when `True`, post-LN when `False`.
            Defaults to `False`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        x: tensor `(batch, T, d)`.
        padding_mask: boolean tensor `(batch, T)` or `None`. Padded keys
            are not attended.
        training: bool. Dropout on when `True`.

    Returns:
        A tensor `(batch, T, d)`.

    Example:
    ```python
    layer = keras_olm.layers.TransformerLayer(num_heads=2, intermediate_dim=32)
    mask = np.array([[1, 1, 1, 0, 0]] * 2) > 0
    y = layer(np.ones((2, 5, 8)), padding_mask=mask)
    ```
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        normalize_first=False,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.activation = activation
        self.normalize_first = bool(normalize_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, input_shape):
        width = input_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"{self.name}: num_heads={self.num_heads} must divide the "
                f"width {width}."
            )
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads,
            key_dim=width // self.num_heads,
            dropout=self.dropout,
            name="self_attention",
            dtype=self.dtype_policy,
        )
        self.attention.build(input_shape, input_shape)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            name="attention_norm",
            dtype=self.dtype_policy,
        )
        self.attention_norm.build(input_shape)
        self.intermediate = keras.layers.Dense(
            self.intermediate_dim,
            self.activation,
            name="intermediate",
            dtype=self.dtype_policy,
        )
        self.intermediate.build(input_shape)
        self.output_dense = keras.layers.Dense(
            width, name="output", dtype=self.dtype_policy
        )
        self.output_dense.build((*input_shape[:-1], self.intermediate_dim))
        self.output_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            name="output_norm",
            dtype=self.dtype_policy,
        )
        self.output_norm.build(input_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.built = True

    def call(self, x, padding_mask=None, training=None):
        att_mask = None
        if padding_mask is not None:
            att_mask = attention_mask(padding_mask, padding_mask)
        h = self.attention_norm(x) if self.normalize_first else x
        h = self.attention(h, h, attention_mask=att_mask, training=training)
        x = x + self.dropout_layer(h, training=training)
        if not self.normalize_first:
            x = self.attention_norm(x)
        h = self.output_norm(x) if self.normalize_first else x
        h = self.output_dense(self.intermediate(h))
        x = x + self.dropout_layer(h, training=training)
        if not self.normalize_first:
            x = self.output_norm(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            normalize_first=self.normalize_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class SequenceEncoder(keras.layers.Layer):
    """Unimodal transformer encoder with a [CLS] token (Eq. 1, §3.1).

    Projects each timestep's features to `hidden_dim`, prepends a learnable
    [CLS] token, adds learned position embeddings and runs `num_layers`
    standard transformer layers, z^[l+1] = Tf(z^[l]) (Eq. 1). The final
    [CLS] token is the utterance-level representation. Every layer's hidden
    states are returned so that a mid-fusion layer (`IRFB`) can read them
    without writing into them.

    Padding is read from the values: a timestep whose features all equal
    `mask_value` is padding and is never attended. Pad ragged sequences
    with `mask_value` (zeros by default) to a common length; a real
    timestep that happens to be all zeros would be taken for padding, so
    pick another `mask_value` if your features can be exactly zero. The
    padding mask is shifted by one for the [CLS] token, which is always
    valid.

    Args:
        hidden_dim: int. Token width d.
        num_layers: int. Transformer layers L; `0` gives just the
            embeddings (what `MBT` consumes).
        num_heads: int. Attention heads; must divide `hidden_dim`.
        intermediate_dim: int. Feed-forward width.
        dropout: float. Dropout on the embeddings, the attention weights
            and after each block. Defaults to `0.0`.
        max_length: int. Longest input sequence (without [CLS]). Defaults
            to `512`.
        mask_value: float or `None`. Feature value that marks a padded
            timestep; `None` disables padding masks. Defaults to `0.0`.
        activation: str. Feed-forward activation. Defaults to `"gelu"`.
        normalize_first: bool. Pre-LN layers when `True` (then a final
            layer normalization is applied to the returned `"pooled"`
            vector); post-LN layers, as the standard transformer, when
            `False`. Defaults to `False`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `(batch, T, f)`, `T <= max_length`.
        training: bool. Dropout on when `True`.

    Returns:
        A dict with
        `"pooled"`: `(batch, d)`, the final layer's [CLS] token;
        `"hidden_states"`: `(batch, L + 1, 1 + T, d)`, index 0 the
        embeddings, index l the output of layer l;
        `"mask"`: boolean `(batch, 1 + T)`, `True` for [CLS] and every
        valid timestep.

    Example:
    ```python
    encoder = keras_olm.layers.SequenceEncoder(
        hidden_dim=32, num_layers=2, num_heads=4, intermediate_dim=64
    )
    x = np.random.rand(2, 10, 20).astype("float32")
    x[1, 6:] = 0.0  # the second sequence has 6 timesteps
    out = encoder(x)
    out["hidden_states"].shape  # (2, 3, 11, 32)
    out["mask"][1, 7:]  # False: padding, shifted by one for [CLS]
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        max_length=512,
        mask_value=0.0,
        activation="gelu",
        normalize_first=False,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_layers) < 0:
            raise ValueError(f"num_layers must be >= 0; got {num_layers}")
        if int(hidden_dim) % int(num_heads):
            raise ValueError(
                f"num_heads={num_heads} must divide hidden_dim={hidden_dim}."
            )
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.max_length = int(max_length)
        self.mask_value = None if mask_value is None else float(mask_value)
        self.activation = activation
        self.normalize_first = bool(normalize_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def _check_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(
                f"{self.name}: inputs must be feature sequences "
                f"(batch, T, features); got shape {tuple(shape)}."
            )
        if shape[1] is not None and shape[1] > self.max_length:
            raise ValueError(
                f"{self.name}: sequences of length {shape[1]} exceed "
                f"max_length={self.max_length}."
            )

    def build(self, input_shape):
        self._check_shape(input_shape)
        d = self.hidden_dim
        batch, length = input_shape[0], input_shape[1]
        tokens = None if length is None else length + 1
        self.projection = keras.layers.Dense(
            d, name="projection", dtype=self.dtype_policy
        )
        self.projection.build(input_shape)
        self.cls_token = self.add_weight(
            name="cls_token",
            shape=(d,),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_length + 1, d),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.embeddings_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            name="embeddings_norm",
            dtype=self.dtype_policy,
        )
        self.embeddings_norm.build((batch, tokens, d))
        self.embeddings_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.transformer_layers = []
        for i in range(self.num_layers):
            layer = TransformerLayer(
                self.num_heads,
                self.intermediate_dim,
                dropout=self.dropout,
                activation=self.activation,
                normalize_first=self.normalize_first,
                layer_norm_epsilon=self.layer_norm_epsilon,
                name=f"transformer_layer_{i}",
                dtype=self.dtype_policy,
            )
            layer.build((batch, tokens, d))
            self.transformer_layers.append(layer)
        if self.normalize_first and self.num_layers:
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                name="final_norm",
                dtype=self.dtype_policy,
            )
            self.final_norm.build((batch, d))
        self.built = True

    def call(self, inputs, training=None):
        self._check_shape(inputs.shape)
        mask = with_cls(timestep_mask(inputs, self.mask_value))
        h = self.projection(inputs)
        cls = ops.zeros_like(h[:, :1, :]) + ops.cast(self.cls_token, h.dtype)
        h = ops.concatenate([cls, h], axis=1)
        length = ops.shape(h)[1]
        positions = ops.slice(
            ops.convert_to_tensor(self.position_embeddings),
            (0, 0),
            (length, self.hidden_dim),
        )
        h = h + ops.cast(positions, h.dtype)
        h = self.embeddings_dropout(self.embeddings_norm(h), training=training)
        hidden = [h]
        for layer in self.transformer_layers:
            h = layer(h, padding_mask=mask, training=training)
            hidden.append(h)
        pooled = h[:, 0, :]
        if self.normalize_first and self.num_layers:
            pooled = self.final_norm(pooled)
        return {
            "pooled": pooled,
            "hidden_states": ops.stack(hidden, axis=1),
            "mask": mask,
        }

    def compute_output_spec(self, inputs, training=None):
        self._check_shape(inputs.shape)
        batch, length = inputs.shape[0], inputs.shape[1]
        tokens = None if length is None else length + 1
        d = self.hidden_dim
        return {
            "pooled": keras.KerasTensor((batch, d), dtype=self.compute_dtype),
            "hidden_states": keras.KerasTensor(
                (batch, self.num_layers + 1, tokens, d),
                dtype=self.compute_dtype,
            ),
            "mask": keras.KerasTensor((batch, tokens), dtype="bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            max_length=self.max_length,
            mask_value=self.mask_value,
            activation=self.activation,
            normalize_first=self.normalize_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
