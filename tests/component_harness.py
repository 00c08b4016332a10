"""One harness that every registered component goes through (not a test
module; `test_components.py` runs it).

The components, found at import time, so that registering one puts it in
the harness with no other edit:

- every name of `keras_olm.balancers.REGISTRY`, and, where
  `keras_olm.balancers` exports `HeadStopping`, every balancer class whose
  constructor takes `head_stopping=`, given one;
- every name of `keras_olm.layers.FUSIONS`;
- every head class that a registered balancer makes (`make_head`), and
  `SequenceEncoder`, the encoder of the fusions that need one.

How a component is built and trained is read from its properties, never
from its name: constructor arguments come from `TINY_ARGUMENTS` by
parameter name (a required parameter missing there is an error naming it);
a balancer with `needs_held_out` gets held-out data; a fusion with
`needs_sequence_encoders` gets `SequenceEncoder`s on sequences, any other
fusion dense encoders on vectors. Every model has two modalities, which
every balancer accepts.

The checks (see `test_components.py`): the config round trip, the `.keras`
round trip, 2 + 2 resumed epochs against 4 straight, a non-finite step
that changes nothing, and one step against the other backends. Heads and
`SequenceEncoder` take the first two on their own and the others inside
the model of their carrier: the balancer that makes the head, the first
fusion that needs sequence encoders.
"""

import dataclasses
import functools
import inspect
import json
import os

import keras
import numpy as np
from keras import tree

import keras_olm
from keras_olm.layers import FUSED
from keras_olm.layers import SequenceEncoder

SAMPLES, BATCH, CLASSES = 48, 16, 4
EPOCHS, SPLIT = 4, 2
MODALITIES = ("fast", "slow")
#: `make_imbalanced`'s 16 and 64 features as sequences (timesteps, features)
#: for the fusions that need `SequenceEncoder`s.
SEQUENCE_SHAPES = {"fast": (4, 4), "slow": (8, 8)}
WIDTH = 8

#: Constructor arguments given to every component whose constructor takes
#: a parameter of that name (a required one must be here): short periods,
#: so that a few steps reach every branch of a balancer's state, and tiny
#: widths.
TINY_ARGUMENTS = {
    # Balancers that read held-out losses: one held-out batch every 2
    # steps; G-Blend re-estimates every 2 steps.
    "held_out_every": 2,
    "refresh_every": 2,
    # A seeded noise stream (OGM-GE): runs repeat.
    "seed": 3,
    # `HeadStopping`: stop after one measurement without a 50 % fall.
    "patience": 1,
    "min_delta": 0.5,
    # Transformer fusions.
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_dim": 16,
}


def np_(x):
    return keras.ops.convert_to_numpy(x)


def tiny_kwargs(factory):
    """The arguments of `TINY_ARGUMENTS` that `factory` takes.

    Raises:
        LookupError: for a required parameter that `TINY_ARGUMENTS` lacks.
    """
    kwargs = {}
    for name, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in TINY_ARGUMENTS:
            kwargs[name] = TINY_ARGUMENTS[name]
        elif p.default is p.empty:
            raise LookupError(
                f"{factory} requires {name!r}, for which the component "
                "harness has no tiny value: add one to "
                "tests/component_harness.py's TINY_ARGUMENTS."
            )
    return kwargs


def build_tiny(factory, **extra):
    return factory(**{**tiny_kwargs(factory), **extra})


# --- the components --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Component:
    """One entry of the harness.

    Args:
        id: str. The test id: `"<kind>-<name>"`.
        kind: str. `"balancer"`, `"fusion"` or `"layer"`.
        build: callable. A fresh instance, with its tiny arguments.
        carrier: str or `None`. For a layer: the id of the model component
            whose model trains it.
        inputs: callable or `None`. For a layer: the inputs it takes,
            given the layer.
        sequences: bool. Whether its model has `SequenceEncoder`s on
            sequences (a fusion whose `needs_sequence_encoders` is `True`).
    """

    id: str
    kind: str
    build: object
    carrier: str = None
    inputs: object = None
    sequences: bool = False

    def __repr__(self):
        return self.id


def _head_stopping_class():
    return getattr(keras_olm.balancers, "HeadStopping", None)


def _takes(cls, name):
    return name in inspect.signature(cls).parameters


def takes_head_stopping(cls):
    """Whether a balancer class takes `head_stopping=`: its own
    declaration (`accepts_head_stopping`), else its constructor's
    signature."""
    declared = getattr(cls, "accepts_head_stopping", None)
    if declared is not None:
        return bool(declared)
    return _takes(cls, "head_stopping")


def balancer_components():
    out = [
        Component(
            f"balancer-{name}", "balancer", functools.partial(build_tiny, cls)
        )
        for name, cls in keras_olm.balancers.REGISTRY.items()
    ]
    head_stopping = _head_stopping_class()
    if head_stopping is not None:
        seen = set()
        for name, cls in keras_olm.balancers.REGISTRY.items():
            if cls in seen or not takes_head_stopping(cls):
                continue
            seen.add(cls)

            def build(cls=cls):
                return build_tiny(cls, head_stopping=build_tiny(head_stopping))

            out.append(
                Component(f"balancer-{name}+head_stopping", "balancer", build)
            )
    return out


def fusion_components():
    return [
        Component(
            f"fusion-{name}",
            "fusion",
            functools.partial(build_tiny, f),
            sequences=getattr(f, "func", f).needs_sequence_encoders,
        )
        for name, f in keras_olm.layers.FUSIONS.items()
    ]


def _features(seed=0, widths=(WIDTH, WIDTH)):
    rng = np.random.default_rng(seed)
    return {
        m: rng.normal(size=(4, w)).astype("float32")
        for m, w in zip(MODALITIES, widths)
    }


def _head_inputs(balancer_cls, head_name):
    def inputs(layer):
        features = _features()
        if head_name != FUSED:
            return features[head_name]
        rng = np.random.default_rng(1)
        balancer = build_tiny(balancer_cls)
        balancer.build_heads([*MODALITIES, FUSED], CLASSES)
        logits = {
            m: rng.normal(size=(4, CLASSES)).astype("float32")
            for m in MODALITIES
        }
        fused = rng.normal(size=(4, 2 * WIDTH)).astype("float32")
        return balancer.fused_head_input({**features, FUSED: fused}, logits)

    return inputs


def _make_head(balancer_cls, head_name):
    balancer = build_tiny(balancer_cls)
    balancer.build_heads([*MODALITIES, FUSED], CLASSES)
    return balancer.make_head(head_name, CLASSES)


def sequence_encoder(name=None):
    return SequenceEncoder(
        hidden_dim=WIDTH,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_length=8,
        name=name,
    )


def layer_components():
    """Every head class a registered balancer makes, with the first
    balancer (in registry order) that makes it; `SequenceEncoder` with
    the first fusion that needs one."""
    out, seen = [], set()
    for name, cls in keras_olm.balancers.REGISTRY.items():
        for head_name in (*MODALITIES, FUSED):
            head_cls = type(_make_head(cls, head_name))
            if head_cls in seen:
                continue
            seen.add(head_cls)
            out.append(
                Component(
                    f"layer-{head_cls.__name__}",
                    "layer",
                    functools.partial(_make_head, cls, head_name),
                    carrier=f"balancer-{name}",
                    inputs=_head_inputs(cls, head_name),
                )
            )
    carriers = [
        name
        for name, f in keras_olm.layers.FUSIONS.items()
        if getattr(f, "func", f).needs_sequence_encoders
    ]
    if carriers:
        out.append(
            Component(
                "layer-SequenceEncoder",
                "layer",
                sequence_encoder,
                carrier=f"fusion-{carriers[0]}",
                inputs=lambda layer: sequence_data(4)[0]["fast"],
            )
        )
    return out


# --- data and models ----------------------------------------------------


def vector_data(samples, seed=0):
    return keras_olm.synthetic.make_imbalanced(
        samples, num_classes=CLASSES, seed=seed
    )


def sequence_data(samples, seed=0):
    x, y = vector_data(samples, seed)
    return {m: x[m].reshape(len(y), *SEQUENCE_SHAPES[m]) for m in x}, y


@dataclasses.dataclass
class Data:
    x: dict
    y: np.ndarray
    held_out: tuple
    probe: dict

    @property
    def shapes(self):
        return {m: (None, *v.shape[1:]) for m, v in self.x.items()}


def make_data(sequences, samples=SAMPLES):
    make = sequence_data if sequences else vector_data
    x, y = make(samples, seed=0)
    held_out = make(2 * BATCH, seed=1)
    probe = {m: v[:8] for m, v in held_out[0].items()}
    return Data(x, y, held_out, probe)


def component_model(component):
    """A fresh tiny model for a balancer or a fusion, and its data."""
    if component.kind == "balancer":
        fusion, balancer = None, component.build()
        sequences = False
    elif component.kind == "fusion":
        fusion, balancer = component.build(), "heads"
        sequences = component.sequences
    else:
        raise ValueError(f"{component.id} is trained by {component.carrier}")
    if sequences:
        encoders = {m: sequence_encoder() for m in MODALITIES}
    else:
        encoders = {
            m: keras.Sequential([keras.layers.Dense(WIDTH, activation="relu")])
            for m in MODALITIES
        }
    model = keras_olm.BalancedMultimodalModel(
        encoders, num_classes=CLASSES, fusion=fusion, balancer=balancer
    )
    return model, make_data(sequences)


def fit(model, data, epochs, initial_epoch=0, x=None, y=None):
    held_out = data.held_out if model.balancer.needs_held_out else None
    return model.fit(
        data.x if x is None else x,
        data.y if y is None else y,
        batch_size=BATCH,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        held_out_data=held_out,
        verbose=0,
    )


def all_state(model):
    """`(path, value)` of every variable of the model (its weights, the
    balancer's state, noise generators) and of its optimizer, in order."""
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return [(v.path, np_(v)) for v in variables]


def assert_same_state(got, want, rtol=0.0, skip=()):
    """`got` and `want` (from `all_state`) hold the same values in the
    same order; bitwise where `rtol` is 0. Paths may differ (a loaded
    optimizer names its variables anew)."""
    assert len(got) == len(want), (len(got), len(want))
    for (_, value), (path, expected) in zip(got, want):
        if any(s in path for s in skip):
            continue
        if rtol:
            np.testing.assert_allclose(
                value, expected, rtol=rtol, atol=rtol, err_msg=path
            )
        else:
            np.testing.assert_array_equal(value, expected, err_msg=path)


def head_logits(model, inputs):
    return {h: np_(v) for h, v in model.head_logits(inputs).items()}


# --- the model runs: straight, saved, loaded and resumed -------------------


@dataclasses.dataclass
class Runs:
    """The runs of one model component, made once and shared by checks.

    `straight` trains `EPOCHS` in one `fit`; `first` trains `SPLIT` epochs
    and is saved to `path` (its state and probe logits then in
    `saved_state`, `saved_logits`); `resumed` is `load_model(path)` (its
    state and logits right after loading in `loaded_state`,
    `loaded_logits`), then trained from epoch `SPLIT` to `EPOCHS`.
    """

    data: Data
    straight: object
    straight_history: dict
    first: object
    path: str
    saved_state: list
    saved_logits: dict
    resumed: object
    resumed_history: dict
    loaded_state: list
    loaded_logits: dict


def new_model(component, seed=0):
    keras.utils.set_random_seed(seed)
    model, data = component_model(component)
    # Adam with an epsilon that keeps a gradient that is zero but for its
    # rounding (an attention key's bias, which the softmax ignores) from
    # becoming full learning-rate steps: with Keras' 1e-7, two XLA
    # compilations of a transformer's step round such a gradient apart
    # and Adam turns that into weights 2e-5 apart after 12 steps.
    model.compile(optimizer=keras.optimizers.Adam(epsilon=1e-3))
    return model, data


def make_runs(component, directory):
    straight, data = new_model(component)
    straight_history = fit(straight, data, EPOCHS).history
    first, _ = new_model(component)
    fit(first, data, SPLIT)
    path = os.path.join(directory, f"{component.id}.keras")
    first.save(path)
    saved_state = all_state(first)
    saved_logits = head_logits(first, data.probe)
    resumed = keras.saving.load_model(path)
    loaded_state = all_state(resumed)
    loaded_logits = head_logits(resumed, data.probe)
    resumed_history = fit(resumed, data, EPOCHS, initial_epoch=SPLIT).history
    return Runs(
        data,
        straight,
        straight_history,
        first,
        path,
        saved_state,
        saved_logits,
        resumed,
        resumed_history,
        loaded_state,
        loaded_logits,
    )


# --- layers on their own ---------------------------------------------------


def built_layer(component):
    """A fresh layer of a `"layer"` or `"fusion"` component, called once on
    its inputs; returns `(layer, inputs, outputs)`."""
    layer = component.build()
    if component.kind == "fusion":
        inputs = fusion_inputs(layer)
    else:
        inputs = component.inputs(layer)
    return layer, inputs, layer(inputs)


def fusion_inputs(fusion):
    """Encoder outputs for a fusion layer: `SequenceEncoder` outputs where
    it needs them, else vectors of two widths."""
    if type(fusion).needs_sequence_encoders:
        x, _ = sequence_data(4)
        return {m: sequence_encoder()(x[m]) for m in MODALITIES}
    return _features(widths=(WIDTH, WIDTH + 4))


def config_json(obj):
    return json.dumps(obj.get_config(), sort_keys=True, indent=1, default=str)


def serialized_json(obj):
    return json.dumps(
        keras.saving.serialize_keras_object(obj), sort_keys=True, default=str
    )


def assert_same_outputs(got, want, rtol=0.0):
    got, want = tree.flatten(got), tree.flatten(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if rtol:
            np.testing.assert_allclose(np_(a), np_(b), rtol=rtol, atol=rtol)
        else:
            np.testing.assert_array_equal(np_(a), np_(b))


def layer_model(layer, inputs):
    """A functional model of `layer` alone, for its `.keras` round trip."""

    def spec(a, name=None):
        return keras.Input(tuple(a.shape[1:]), dtype=str(a.dtype), name=name)

    if isinstance(inputs, dict):
        symbolic = {k: spec(v, k) for k, v in inputs.items()}
    else:
        symbolic = spec(inputs)
    return keras.Model(symbolic, layer(symbolic))


# --- the harness's entries, found now ------------------------------------

BALANCERS = balancer_components()
FUSIONS = fusion_components()
MODEL_COMPONENTS = BALANCERS + FUSIONS
LAYERS = layer_components()
ALL = MODEL_COMPONENTS + LAYERS
BY_ID = {c.id: c for c in ALL}


# --- one step, on every backend -------------------------------------------


def one_step(component):
    """One SGD step of the component's model from weights and data that
    are the same on every backend; returns what it computed, as lists."""
    keras.utils.set_random_seed(0)
    model, data = component_model(component)
    # One batch to train on; a held-out batch of its own.
    data.x = {m: v[:BATCH] for m, v in data.x.items()}
    data.y = data.y[:BATCH]
    data.held_out = (
        {m: v[:BATCH] for m, v in data.held_out[0].items()},
        data.held_out[1][:BATCH],
    )
    model.build(data.shapes)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    history = fit(model, data, 1).history
    return {
        # A noise generator's draws differ between backends.
        "random": any("seed_generator" in v.path for v in model.variables),
        "history": {k: float(v[-1]) for k, v in history.items()},
        "variables": [
            np_(v).tolist()
            for v in model.variables
            if "seed_generator" not in v.path
        ],
        "logits": {
            h: v.tolist() for h, v in head_logits(model, data.probe).items()
        },
    }


def one_step_all(ids=None):
    """`one_step` of the model components `ids` (default: all), by id."""
    ids = [c.id for c in MODEL_COMPONENTS] if ids is None else ids
    return {i: one_step(BY_ID[i]) for i in ids}


def main_one_step_all(ids=None):
    """Prints `one_step_all(ids)` as one JSON line (a child's entry)."""
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
    print(json.dumps(one_step_all(ids)))
