"""The fusion contract: `Fusion`, the base class of every fusion layer.

A fusion layer sits between the encoders and the heads of
`BalancedMultimodalModel`: it maps the dict of encoder outputs to a dict
with one feature per modality, read by that modality's head, and one under
`FUSED`, read by the fused head. Balancers rely on nothing else, so every
balancer works with every fusion.
"""

import keras

FUSED = "fused"
SEQUENCE_KEYS = ("pooled", "hidden_states", "mask")


class Fusion(keras.layers.Layer):
    """Base class of the fusion layers.

    The contract: `call(features)` takes a dict from modality name to that
    modality's encoder output and returns a dict with

    - one feature tensor `(batch, d_m)` per input modality, under the
      modality's name and in the order of the input dict, which is what
      the modality's unimodal head reads;
    - one fused feature tensor `(batch, d)` under `FUSED` (`"fused"`),
      which is what the fused head reads.

    `compute_output_shape` returns the shapes of that dict. Subclasses
    implement `build`, `call`, `compute_output_shape` and `get_config`,
    and check their inputs with the methods below: `check_modalities` (a
    dict of enough modalities), `check_built_modalities` (the modalities
    the layer was built for, recorded in `self.modalities` by `build`) and,
    for fusions of `SequenceEncoder` outputs, `check_streams`.

    A fusion that reads more than each encoder's final output declares it
    in the class attribute `needs_sequence_encoders`: `True` where every
    modality's encoder must be a `SequenceEncoder` (the layer reads their
    `"hidden_states"` and `"mask"`, as `IRFB` and `MBT` do).

    Args:
        **kwargs: passed to `keras.layers.Layer`.

    Example:
    ```python
    class SumFusion(keras_olm.layers.Fusion):
        def call(self, features):
            self.check_modalities(features)
            fused = sum(features.values())
            return {**features, keras_olm.layers.FUSED: fused}

    out = SumFusion()({"audio": np.ones((2, 4)), "visual": np.ones((2, 4))})
    sorted(out)  # ["audio", "fused", "visual"]
    ```
    """

    #: Whether every modality's encoder must be a `SequenceEncoder`.
    needs_sequence_encoders = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.modalities = None

    def check_modalities(self, features, minimum=2):
        """Checks that `features` is a dict of at least `minimum` entries.

        Args:
            features: the dict of encoder outputs (or of their shapes).
            minimum: int. The fewest modalities the layer fuses. Defaults
                to `2`.

        Raises:
            ValueError: naming the layer and what it got.
        """
        name = type(self).__name__
        if not isinstance(features, dict):
            raise ValueError(
                f"{name} takes a dict from modality name to encoder output; "
                f"got {type(features).__name__}."
            )
        if len(features) < minimum:
            raise ValueError(
                f"{name} fuses at least {minimum} modalities; got "
                f"{sorted(features)}."
            )

    def check_built_modalities(self, features):
        """Checks that a call gets the modalities the layer was built for.

        Does nothing before `build` has recorded `self.modalities`.

        Args:
            features: the dict of encoder outputs.

        Raises:
            ValueError: naming the missing and the unexpected modalities.
        """
        built = self.modalities
        if built is not None and sorted(features) != sorted(built):
            missing = sorted(set(built) - set(features))
            extra = sorted(set(features) - set(built))
            raise ValueError(
                f"{type(self).__name__} '{self.name}' was built for "
                f"modalities {sorted(built)}; got {sorted(features)} "
                f"(missing {missing}, unexpected {extra})."
            )

    def check_streams(self, features_shape):
        """Checks the shapes of `SequenceEncoder` outputs.

        Every modality's encoder must return a dict with `"pooled"`,
        `"hidden_states"` of shape `(batch, L + 1, tokens, d)` and
        `"mask"`, and all encoders must share L and d.

        Args:
            features_shape: dict from modality name to the shapes of its
                encoder's output dict.

        Returns:
            `(modalities, L, d)`: the sorted modality names, the encoders'
            number of layers and their width.

        Raises:
            ValueError: naming the layer and the offending modality.
        """
        where = self.name
        if not isinstance(features_shape, dict) or not features_shape:
            raise ValueError(
                f"{where} takes a dict from modality name to SequenceEncoder "
                f"output; got {type(features_shape).__name__}."
            )
        first, layers, width = None, None, None
        for m in sorted(features_shape):
            shape = features_shape[m]
            if not isinstance(shape, dict) or any(
                k not in shape for k in SEQUENCE_KEYS
            ):
                got = sorted(shape) if isinstance(shape, dict) else shape
                raise ValueError(
                    f"{where}: the encoder of modality '{m}' must return a "
                    f"dict with {list(SEQUENCE_KEYS)} "
                    f"(keras_olm.layers.SequenceEncoder); got {got}."
                )
            hidden = tuple(shape["hidden_states"])
            if len(hidden) != 4:
                raise ValueError(
                    f"{where}: modality '{m}': hidden_states must be "
                    f"(batch, layers + 1, tokens, d); got {hidden}."
                )
            if first is None:
                first, layers, width = m, hidden[1], hidden[3]
                continue
            if hidden[1] != layers:
                raise ValueError(
                    f"{where}: every encoder must have the same number of "
                    f"layers; modality '{m}' has {hidden[1] - 1}, modality "
                    f"'{first}' has {layers - 1}."
                )
            if hidden[3] != width:
                raise ValueError(
                    f"{where}: every encoder must have the same width; "
                    f"modality '{m}' has {hidden[3]}, modality '{first}' "
                    f"has {width}."
                )
        return sorted(features_shape), layers - 1, width
