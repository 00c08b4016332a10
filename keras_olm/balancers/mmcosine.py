"""MMCosine: multimodal cosine heads (Xu et al., ICASSP 2023).

Xu et al., "MMCosine: Multi-Modal Cosine Loss Towards Balanced
Audio-Visual Fine-Grained Learning". Every head's logits become scaled
cosine similarities between the L2-normalised feature and the
L2-normalised class weights:

    z_c = s · cos θ_c = s · <W_c / ||W_c||, x / ||x||>

so no modality can dominate through the norm of its features or weights,
only through their direction; the scale s sets the softmax's sharpness
(the paper tunes it per dataset). The fused logits of the paper are the
sum of each modality's scaled cosine (the concatenation's weight split
per modality); here the fused head is one cosine head on the fusion
layer's fused feature (the heads cannot see the split of a concatenated
feature), and every modality head is a cosine head too.
"""

import keras
from keras import ops

from keras_olm.balancers.base import Balancer


def cosine_logits(features, kernel, scale, eps=1e-12):
    """Scaled cosine similarity of features and class weights.

    Args:
        features: tensor `(batch, dim)`.
        kernel: tensor `(dim, num_classes)`; column c is class c's weight.
        scale: float. The scale s.
        eps: float. Guards the normalisation of zero vectors. Defaults to
            `1e-12`.

    Returns:
        A tensor `(batch, num_classes)`: s · cos(x_i, W_c).
    """
    features = ops.convert_to_tensor(features)
    kernel = ops.convert_to_tensor(kernel)
    x = features / ops.sqrt(
        ops.maximum(ops.sum(ops.square(features), -1, keepdims=True), eps)
    )
    w = kernel / ops.sqrt(
        ops.maximum(ops.sum(ops.square(kernel), 0, keepdims=True), eps)
    )
    return scale * ops.matmul(x, w)


@keras.saving.register_keras_serializable(package="keras_olm")
class CosineHead(keras.layers.Layer):
    """A bias-free classifier whose logits are scaled cosines.

    Args:
        units: int. Number of classes.
        scale: float. The scale s of the cosine logits. Defaults to `10.0`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor `(batch, dim)`.

    Example:
    ```python
    head = keras_olm.balancers.CosineHead(6, scale=10.0)
    logits = head(keras.ops.ones((2, 32)))  # (2, 6), each in [-10, 10]
    ```
    """

    def __init__(self, units, scale=10.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = float(scale)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.units),
            initializer="glorot_uniform",
        )

    def call(self, inputs):
        return cosine_logits(inputs, self.kernel, self.scale)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="keras_olm")
class MMCosine(Balancer):
    """MMCosine: every head is a scaled cosine classifier.

    The heads' losses are the per-head cross-entropies of the base
    `Balancer`, on logits s · cos θ (see `cosine_logits`). The method has
    no state: it balances the modalities by taking the norm of features
    and weights out of the logits, so a fast modality cannot dominate the
    fused logits by growing its feature norm.

    Args:
        scale: float. The scale s of every head's cosine logits (the
            paper tunes it per dataset). Defaults to `10.0`.
        **kwargs: passed to `Balancer` (e.g. `head_stopping`).

    Example:
    ```python
    model = keras_olm.BalancedMultimodalModel(
        {"audio": audio_encoder, "visual": visual_encoder},
        num_classes=6,
        balancer=keras_olm.balancers.MMCosine(scale=10.0),
    )
    ```

    References:
        - [Xu et al., 2023](https://arxiv.org/abs/2303.05338)
    """

    def __init__(self, scale=10.0, **kwargs):
        super().__init__(**kwargs)
        if float(scale) <= 0:
            raise ValueError(f"scale must be > 0; got {scale}")
        self.scale = float(scale)

    def make_head(self, name, num_classes):
        return CosineHead(num_classes, scale=self.scale, name=f"{name}_head")

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config


__all__ = ["CosineHead", "MMCosine", "cosine_logits"]
