"""Keras' own layer checks (`run_layer_test`) on every layer, per backend.

The layers, found at import time so that a new registration is covered:

- every name of `keras_olm.layers.FUSIONS`, built with the component
  harness' tiny arguments, on dense vectors or, where the fusion
  `needs_sequence_encoders`, on `SequenceEncoder` outputs;
- every head class that a registered balancer makes, and
  `SequenceEncoder` (`component_harness.layer_components`);
- the other public layers (`TransformerLayer`, the IRFB blocks), from
  `PUBLIC_CASES`; `test_every_public_layer_is_checked` fails for a public
  layer class of `keras_olm.layers` or `keras_olm.balancers` that no case
  covers.

`run_layer_test` checks the config and serialization round trips, the
weight counts of `build` against a call, the symbolic and the eager call
against the expected output shapes and dtypes, one compiled training step,
and, where Keras runs it (not on torch without CUDA), a `mixed_float16`
instance: outputs in the dtypes of `compute_output_spec`, weights float32.
`test_mixed_bfloat16` runs the same dtype check, on every backend, under
the global `mixed_bfloat16` policy.
"""

import dataclasses
import inspect

import component_harness
import keras
import numpy as np
import pytest
from component_harness import CLASSES
from component_harness import MODALITIES
from component_harness import WIDTH
from keras import tree
from keras.src.testing import test_case

import keras_olm
from keras_olm.layers import FUSED

BATCH = 4
#: The bottleneck tokens and sequence lengths of the IRFB block cases.
BOTTLENECK, LENGTHS = 2, {"fast": 5, "slow": 9}
#: The key under which a layer that takes one dict (a fusion, the
#: uncertainty fusion) gets it from `run_layer_test` (see `keyword_input`).
INPUTS = "inputs"


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer under `run_layer_test`.

    Args:
        id: str. The test id.
        build: callable. A fresh instance, with its tiny arguments; the
            test reads its class and config from it.
        inputs: callable. The call's inputs, numpy arrays: one array, or
            the dict of `INPUTS` (one dict argument) or of call argument
            names (several arguments).
        expected_shapes: callable. The output shape (or dict of shapes),
            `None` for a dimension the test does not fix, given the case's
            inputs.
        call_kwargs: callable or `None`. Extra call arguments (arrays),
            given to every call but the training step's.
    """

    id: str
    build: object
    inputs: object
    expected_shapes: object
    call_kwargs: object = None

    def __repr__(self):
        return self.id


def np_(x):
    return keras.ops.convert_to_numpy(x)


def sequence_features():
    """`SequenceEncoder` outputs of both modalities, as numpy arrays."""
    keras.utils.set_random_seed(0)
    x, _ = component_harness.sequence_data(BATCH)
    x = {m: v.copy() for m, v in x.items()}
    x["slow"][1, 5:] = 0.0  # padding: the mask holds False entries
    return {
        m: tree.map_structure(np_, component_harness.sequence_encoder()(v))
        for m, v in x.items()
    }


def vector_features():
    return component_harness._features()


#: The fused width of each registered fusion on `WIDTH`-wide features of
#: two modalities (the harness' tiny arguments); `None` for a fusion not
#: listed (the contract fixes the rank and the batch only).
FUSED_WIDTH = {
    "concat": 2 * WIDTH,
    "sum": WIDTH,
    "film": WIDTH,
    "gated": WIDTH,
    "attention": WIDTH,
    "irfb": WIDTH,
    "irfb_authors": WIDTH,
    "mbt": WIDTH,
}


def fusion_cases():
    out = []
    for name, factory in keras_olm.layers.FUSIONS.items():
        sequences = getattr(factory, "func", factory).needs_sequence_encoders
        features = sequence_features if sequences else vector_features

        def expected(inputs, name=name):
            shapes = {m: (BATCH, WIDTH) for m in inputs[INPUTS]}
            return {**shapes, FUSED: (BATCH, FUSED_WIDTH.get(name))}

        out.append(
            Case(
                f"fusion-{name}",
                lambda factory=factory: component_harness.build_tiny(factory),
                lambda features=features: {INPUTS: features()},
                expected,
            )
        )
    return out


def _head_case(component):
    def inputs():
        x = component.inputs(component.build())
        return {INPUTS: x} if isinstance(x, dict) else x

    return Case(
        component.id, component.build, inputs, lambda x: (BATCH, CLASSES)
    )


def _sequence_encoder_expected(x):
    tokens = x.shape[1] + 1
    return {
        "pooled": (BATCH, WIDTH),
        "hidden_states": (BATCH, 2, tokens, WIDTH),
        "mask": (BATCH, tokens),
    }


def layer_cases():
    out = []
    for component in component_harness.layer_components():
        if component.id == "layer-SequenceEncoder":
            out.append(
                Case(
                    component.id,
                    component.build,
                    lambda: component_harness.sequence_data(BATCH)[0]["slow"],
                    _sequence_encoder_expected,
                )
            )
        else:
            out.append(_head_case(component))
    return out


def _tokens():
    rng = np.random.default_rng(2)
    return {
        m: rng.normal(size=(BATCH, n, WIDTH)).astype("float32")
        for m, n in LENGTHS.items()
    }


def _masks():
    masks = {m: np.ones((BATCH, n), bool) for m, n in LENGTHS.items()}
    masks["slow"][1, 5:] = False
    return masks


def _block_inputs():
    rng = np.random.default_rng(3)
    bottleneck = rng.normal(size=(BATCH, BOTTLENECK, WIDTH))
    return {
        "bottleneck": bottleneck.astype("float32"),
        "tokens": _tokens(),
        "padding_masks": _masks(),
    }


def _block_case(cls):
    return Case(
        f"layer-{cls.__name__}",
        lambda: cls(num_heads=2, intermediate_dim=16),
        _block_inputs,
        lambda x: (BATCH, BOTTLENECK, WIDTH),
    )


#: The public layer classes that neither registry reaches, each with its
#: case.
PUBLIC_CASES = {
    keras_olm.layers.TransformerLayer: Case(
        "layer-TransformerLayer",
        lambda: keras_olm.layers.TransformerLayer(
            num_heads=2, intermediate_dim=16
        ),
        lambda: _tokens()["slow"],
        lambda x: x.shape,
        call_kwargs=lambda: {"padding_mask": _masks()["slow"]},
    ),
    keras_olm.layers.IRFBBlock: _block_case(keras_olm.layers.IRFBBlock),
    keras_olm.layers.AuthorsIRFBBlock: _block_case(
        keras_olm.layers.AuthorsIRFBBlock
    ),
}

CASES = [*fusion_cases(), *layer_cases(), *PUBLIC_CASES.values()]

BACKEND = keras.backend.backend()
#: The cases marked `slow` (over ~10 s on one CPU core), per test and
#: backend: XLA compiles the transformer layers' training step slowly on
#: TensorFlow and JAX, and JAX runs IRFB's many small ops slowly eagerly.
SLOW = {
    ("test_run_layer_test", "tensorflow"): {
        "fusion-irfb",
        "fusion-irfb_authors",
        "fusion-mbt",
        "layer-AuthorsIRFBBlock",
    },
    ("test_run_layer_test", "jax"): {
        "fusion-irfb",
        "fusion-irfb_authors",
        "fusion-mbt",
        "layer-SequenceEncoder",
        "layer-IRFBBlock",
        "layer-AuthorsIRFBBlock",
    },
    ("test_mixed_bfloat16", "jax"): {"fusion-irfb", "layer-IRFBBlock"},
}


def cases(test):
    """`CASES`, those of `SLOW` for `test` on this backend marked slow."""
    slow = SLOW.get((test, BACKEND), set())
    return [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.slow] if c.id in slow else []
        )
        for c in CASES
    ]


# --- run_layer_test's inputs ----------------------------------------------


def keyword_input(cls, spread):
    """A subclass of `cls` that takes its inputs as `run_layer_test` passes
    them.

    `run_layer_test` calls a layer on a dict input as `layer(**inputs)`,
    builds it as `layer.build(**shapes)` with the same keys, and trains it
    in a model that calls `layer(inputs)`. The subclass takes the dict as
    its one argument, `inputs`, and unwraps it: for `spread=False` it is
    `{INPUTS: x}` for a layer that takes one dict `x` (a fusion); for
    `spread=True` it maps `cls`'s call arguments to their values (an IRFB
    block's `bottleneck`, `tokens` and `padding_masks`). Everything else,
    weights, computation and config, is `cls`'s.
    """
    takes_training = "training" in inspect.signature(cls.call).parameters
    build_arguments = inspect.signature(cls.build).parameters

    def unwrap(inputs):
        if isinstance(inputs, dict) and set(inputs) == {INPUTS}:
            return inputs[INPUTS]
        return inputs

    def shapes(inputs):
        """`cls.build`'s arguments from the shapes of `inputs`."""
        return {
            f"{k}_shape": v
            for k, v in inputs.items()
            if f"{k}_shape" in build_arguments
        }

    class KeywordInput(cls):
        def build(self, inputs):
            inputs = unwrap(inputs)
            if spread:
                super().build(**shapes(inputs))
            else:
                super().build(inputs)

        def call(self, inputs, training=None):
            inputs = unwrap(inputs)
            kwargs = {"training": training} if takes_training else {}
            if spread:
                return super().call(**inputs, **kwargs)
            return super().call(inputs, **kwargs)

        def compute_output_shape(self, inputs):
            inputs = unwrap(inputs)
            if spread:
                return super().compute_output_shape(**shapes(inputs))
            return super().compute_output_shape(inputs)

    KeywordInput.__name__ = f"KeywordInput{cls.__name__}"
    return KeywordInput


def layer_test_arguments(case):
    """`(layer class, init kwargs, input data, custom objects)` for
    `run_layer_test`."""
    layer = case.build()
    cls = type(layer)
    config = layer.get_config()
    for key in ("name", "dtype", "trainable"):
        config.pop(key, None)
    data = case.inputs()
    custom_objects = None
    if isinstance(data, dict):
        spread = set(data) != {INPUTS}
        cls = keyword_input(cls, spread)
        custom_objects = {cls.__name__: cls}
        if spread:
            data = {INPUTS: data}
    return cls, config, data, custom_objects


def float_dtype_of(x, dtype):
    """`dtype` for a float array, its own dtype otherwise."""
    x_dtype = keras.backend.standardize_dtype(x.dtype)
    return dtype if keras.backend.is_float_dtype(x_dtype) else x_dtype


def expected_dtypes(case, data, dtype):
    """The output dtypes: `dtype` for every float output, `"bool"` for a
    `SequenceEncoder`'s mask."""
    shapes = case.expected_shapes(data)
    if isinstance(shapes, dict):
        return {k: "bool" if k == "mask" else dtype for k in shapes}
    return dtype


class LayerChecks(test_case.TestCase):
    pass


@pytest.fixture
def checks():
    # `TestCase.setUp` clears the session and resets the dtype policy.
    t = LayerChecks("run_layer_test")
    t.setUp()
    yield t
    t.tearDown()


@pytest.mark.parametrize("case", cases("test_run_layer_test"))
def test_run_layer_test(case, checks):
    cls, config, data, custom_objects = layer_test_arguments(case)
    raw = case.inputs()
    call_kwargs = case.call_kwargs() if case.call_kwargs else None
    checks.run_layer_test(
        cls,
        init_kwargs=config,
        input_data=data,
        call_kwargs=call_kwargs,
        expected_output_shape=case.expected_shapes(raw),
        expected_output_dtype=expected_dtypes(case, raw, "float32"),
        custom_objects=custom_objects,
        run_training_check=True,
        run_mixed_precision_check=True,
    )
    # The registered class itself (not the test's subclass) round trips.
    checks.run_class_serialization_test(case.build())


@pytest.mark.parametrize("policy", ("global", "layer"))
@pytest.mark.parametrize("case", cases("test_mixed_bfloat16"))
def test_mixed_bfloat16(case, policy):
    """Under `mixed_bfloat16`, the global policy or the layer's own
    (`dtype=`, which its sublayers must take too), a layer computes in
    bfloat16 (every float output, as `compute_output_spec` says) and keeps
    its float variables in float32."""
    previous = keras.mixed_precision.dtype_policy()
    try:
        if policy == "global":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
            layer = case.build()
        else:
            config = case.build().get_config()
            layer = type(case.build()).from_config(
                {**config, "dtype": "mixed_bfloat16"}
            )
        assert layer.compute_dtype == "bfloat16"
        assert layer.variable_dtype == "float32"
        data = case.inputs()
        call_kwargs = case.call_kwargs() if case.call_kwargs else {}
        if isinstance(data, dict) and set(data) == {INPUTS}:
            args, kwargs = (data[INPUTS],), call_kwargs
        elif isinstance(data, dict):
            args, kwargs = (), {**data, **call_kwargs}
        else:
            args, kwargs = (data,), call_kwargs
        out = layer(*args, **kwargs)

        def spec_of(x):
            return keras.KerasTensor(x.shape, float_dtype_of(x, "bfloat16"))

        spec = layer.compute_output_spec(
            *tree.map_structure(spec_of, args),
            **tree.map_structure(spec_of, kwargs),
        )
        want = expected_dtypes(case, case.inputs(), "bfloat16")
        got = tree.map_structure(
            lambda x: keras.backend.standardize_dtype(x.dtype), out
        )
        assert got == want
        got_spec = tree.map_structure(lambda x: x.dtype, spec)
        assert got_spec == want
        for v in layer.weights:
            if keras.backend.is_float_dtype(v.dtype):
                assert v.dtype == "float32", v.path
    finally:
        keras.mixed_precision.set_global_policy(previous)


#: Public layer classes that are not called on tensors: the balancers and
#: their head stopping are trained by the model; `Fusion` is the abstract
#: base of the fusions.
NOT_CALLED = (
    keras_olm.balancers.Balancer,
    keras_olm.balancers.HeadStopping,
)


def _public_layer_classes():
    out = set()
    for module in (keras_olm.layers, keras_olm.balancers):
        for name in module.__all__:
            obj = getattr(module, name)
            if not (
                inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)
            ):
                continue
            if issubclass(obj, NOT_CALLED) or obj is keras_olm.layers.Fusion:
                continue
            out.add(obj)
    return out


def test_every_public_layer_is_checked():
    covered = {type(case.build()) for case in CASES}
    missing = sorted(c.__name__ for c in _public_layer_classes() - covered)
    assert not missing, (
        f"public layers without a case in tests/test_layer_checks.py: "
        f"{missing}; add them to PUBLIC_CASES."
    )


def test_head_stopping_state_is_float32():
    """`HeadStopping`'s state stays float32 under `mixed_bfloat16`."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        stopping = keras_olm.balancers.HeadStopping(patience=1)
        stopping.build_heads(len(MODALITIES), 1)
        assert stopping.variables
        for v in stopping.variables:
            assert v.dtype == "float32", v.path
    finally:
        keras.mixed_precision.set_global_policy(previous)
