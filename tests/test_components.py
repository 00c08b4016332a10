"""Every registered component through one harness, on the current backend.

The components and how each is built: `component_harness.py`. The checks,
per component:

1. `config`: `get_config` / `from_config` (and `serialize_keras_object`)
   give an equal config; a layer rebuilt from it, given the same weights,
   gives the same outputs, bitwise.
2. `keras`: a `.keras` round trip gives the same predictions and the same
   variables (weights, balancer state, optimizer), bitwise.
3. `resume`: 2 epochs, `save`, `load_model`, 2 more epochs give the
   variables and losses of 4 epochs in one `fit`, bitwise.
4. `non_finite`: a step with a NaN input raises `NonFiniteLossError` and
   leaves every variable bitwise as it was.
5. `backends`: one step from the same weights and data agrees with the
   other backends (one child process per backend for all components).

Heads and `SequenceEncoder` take checks 1-2 on their own and 3-5 in their
carrier's model; `test_layer_is_carried` checks that the carrier's model
holds one.
"""

import importlib.util

import component_harness
import keras
import numpy as np
import pytest
from component_harness import ALL
from component_harness import BATCH
from component_harness import BY_ID
from component_harness import EPOCHS
from component_harness import LAYERS
from component_harness import MODALITIES
from component_harness import MODEL_COMPONENTS
from component_harness import SPLIT
from component_harness import all_state
from component_harness import assert_same_outputs
from component_harness import assert_same_state
from component_harness import built_layer
from component_harness import component_model
from component_harness import config_json
from component_harness import fit
from component_harness import layer_model
from component_harness import make_runs
from component_harness import one_step
from component_harness import serialized_json
from olm_testing import run_in_backend

import keras_olm

BACKENDS = ("tensorflow", "jax", "torch")
BACKEND = keras.backend.backend()
# One float32 step from the same weights: the backends' kernels differ in
# summation order only.
RTOL, ATOL = 1e-4, 1e-5
# Resumed against straight runs: bitwise, except on TensorFlow, whose XLA
# compilations of the two models may differ in the last bit (IRFB's
# "authors" variant: 1.9e-9 on a weight of 0.0045).
RESUME_RTOL = {"tensorflow": 1e-6}.get(BACKEND, 0.0)

#: (component id, check, backend) -> the bug that makes that check fail
#: there: the test stays, as `xfail(strict=True)`, until it is fixed.
KNOWN_BUGS = {}


def is_slow(component, check, other=None):
    """JAX and TensorFlow compile a transformer fusion's training step in
    10-60 s (a vector model's in 1-5 s), three times for its model checks:
    those are `slow` there, as its step in a JAX child is (torch runs it
    in under 2 s)."""
    if not component.sequences:
        return False
    if check == "backends":
        return "jax" in (BACKEND, other)
    model_check = check in ("keras", "resume", "non_finite")
    return model_check and BACKEND in ("jax", "tensorflow")


def marks(component, check, other=None):
    out = []
    reason = KNOWN_BUGS.get((component.id, check, BACKEND))
    if reason:
        out.append(pytest.mark.xfail(strict=True, reason=reason))
    if is_slow(component, check, other):
        out.append(pytest.mark.slow)
    return out


def params(components, check):
    return [pytest.param(c, id=c.id, marks=marks(c, check)) for c in components]


def pairs(components):
    """(component, other backend) of the cross-backend check."""
    return [
        pytest.param(
            c, other, id=f"{c.id}-{other}", marks=marks(c, "backends", other)
        )
        for c in components
        for other in BACKENDS
    ]


# --- the harness covers every registered name ------------------------------


def test_every_registered_name_is_in_the_harness():
    ids = set(BY_ID)
    for name in keras_olm.balancers.REGISTRY:
        assert f"balancer-{name}" in ids, name
    for name in keras_olm.layers.FUSIONS:
        assert f"fusion-{name}" in ids, name
    for layer in ("CosineHead", "PrototypeHead", "SharedHead"):
        assert f"layer-{layer}" in ids, layer
    assert {"layer-UncertaintyFusion", "layer-Dense"} <= ids
    assert "layer-SequenceEncoder" in ids
    assert len(ids) == len(ALL)


def test_fusion_registry_builds_fusions():
    for name, factory in keras_olm.layers.FUSIONS.items():
        cls = getattr(factory, "func", factory)
        assert issubclass(cls, keras_olm.layers.Fusion), name
    fusion = keras_olm.layers.get("SUM", units=5)
    assert isinstance(fusion, keras_olm.LateFusion)
    assert (fusion.mode, fusion.units) == ("sum", 5)
    assert keras_olm.layers.get("irfb_authors").variant == "authors"
    with pytest.raises(ValueError, match=r"Unknown fusion 'nope'.*'mbt'"):
        keras_olm.layers.get("nope")


def test_a_new_registration_enters_the_harness(monkeypatch):
    """Registering a balancer or a fusion is the only edit needed; a
    required constructor argument the harness cannot fill is an error."""

    class Probe(keras_olm.balancers.Balancer):
        pass

    class NeedsAnArgument(keras_olm.layers.LateFusion):
        def __init__(self, unknown_argument, **kwargs):
            super().__init__(**kwargs)

    monkeypatch.setitem(keras_olm.balancers.REGISTRY, "probe", Probe)
    monkeypatch.setitem(keras_olm.layers.FUSIONS, "needy", NeedsAnArgument)
    balancers = {c.id: c for c in component_harness.balancer_components()}
    assert isinstance(balancers["balancer-probe"].build(), Probe)
    fusions = {c.id: c for c in component_harness.fusion_components()}
    with pytest.raises(LookupError, match="'unknown_argument'.*TINY_ARGUM"):
        fusions["fusion-needy"].build()

    # With a `HeadStopping` exported, every balancer class that takes
    # `head_stopping=` is there a second time, given one.
    class HeadStopping:
        def __init__(self, patience=40):
            self.patience = patience

    monkeypatch.setattr(
        keras_olm.balancers, "HeadStopping", HeadStopping, raising=False
    )
    ids = [c.id for c in component_harness.balancer_components()]
    # One entry per class (an alias such as "multihead" adds none).
    first_names = {}
    for name, cls in keras_olm.balancers.REGISTRY.items():
        first_names.setdefault(cls, name)
    takes = [
        name
        for cls, name in first_names.items()
        if component_harness.takes_head_stopping(cls)
    ]
    assert takes
    for name in takes:
        assert f"balancer-{name}+head_stopping" in ids


@pytest.mark.parametrize("layer", params(LAYERS, "carried"))
def test_layer_is_carried(layer):
    """The carrier's model holds the layer: checks 3-5 of the carrier run
    it."""
    model, data = component_model(BY_ID[layer.carrier])
    model.build(data.shapes)
    cls = type(layer.build())
    found = [sub for sub in model._flatten_layers() if type(sub) is cls]
    assert found, (layer.id, layer.carrier)


# --- 1. config round trip ---------------------------------------------------


@pytest.mark.parametrize("component", params(ALL, "config"))
def test_config_round_trip(component):
    if component.kind == "balancer":
        obj = component.build()
        clones = [
            type(obj).from_config(obj.get_config()),
            keras.saving.deserialize_keras_object(
                keras.saving.serialize_keras_object(obj)
            ),
        ]
        for clone in clones:
            assert type(clone) is type(obj)
            assert config_json(clone) == config_json(obj)
        assert serialized_json(clones[1]) == serialized_json(obj)
        return
    layer, inputs, outputs = built_layer(component)
    clone = type(layer).from_config(layer.get_config())
    assert config_json(clone) == config_json(layer)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is type(layer)
    assert serialized_json(revived) == serialized_json(layer)
    clone(inputs)
    assert len(clone.weights) == len(layer.weights)
    clone.set_weights(layer.get_weights())
    assert_same_outputs(clone(inputs), outputs)


# --- 2. .keras round trip ---------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}
    directory = str(tmp_path_factory.mktemp("runs"))

    def get(component):
        if component.id not in cache:
            cache[component.id] = make_runs(component, directory)
        return cache[component.id]

    return get


@pytest.mark.parametrize("component", params(MODEL_COMPONENTS, "keras"))
def test_keras_round_trip(component, runs):
    run = runs(component)
    first = run.first
    restored = keras.saving.load_model(run.path)
    assert type(restored.balancer) is type(first.balancer)
    assert type(restored.fusion) is type(first.fusion)
    assert config_json(restored.balancer) == config_json(first.balancer)
    assert config_json(restored.fusion) == config_json(first.fusion)
    assert_same_state(run.loaded_state, run.saved_state)
    for h in first.head_names:
        np.testing.assert_array_equal(
            run.loaded_logits[h], run.saved_logits[h], err_msg=h
        )


@pytest.mark.parametrize("layer", params(LAYERS, "keras"))
def test_layer_keras_round_trip(layer, tmp_path):
    instance, inputs, _ = built_layer(layer)
    model = layer_model(instance, inputs)
    before = model(inputs)
    path = str(tmp_path / f"{layer.id}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert_same_state(all_state(restored), all_state(model))
    assert_same_outputs(restored(inputs), before)


# --- 3. resume ----------------------------------------------------------------


@pytest.mark.parametrize("component", params(MODEL_COMPONENTS, "resume"))
def test_resume_equals_straight_run(component, runs):
    run = runs(component)
    assert_same_state(
        all_state(run.resumed), all_state(run.straight), rtol=RESUME_RTOL
    )
    for key, values in run.resumed_history.items():
        np.testing.assert_allclose(
            values,
            run.straight_history[key][SPLIT:],
            rtol=RESUME_RTOL,
            atol=0.0,
            err_msg=key,
        )
    steps = int(keras.ops.convert_to_numpy(run.resumed.training_state.steps))
    assert steps == EPOCHS * len(run.data.y) // BATCH


# --- 4. non-finite step -------------------------------------------------------


@pytest.mark.parametrize("component", params(MODEL_COMPONENTS, "non_finite"))
def test_non_finite_step_changes_nothing(component, runs):
    run = runs(component)
    model, data = run.first, run.data
    before = all_state(model)
    x = {m: v[:BATCH].copy() for m, v in data.x.items()}
    x[MODALITIES[-1]].reshape(-1)[0] = np.nan
    with pytest.raises(keras_olm.NonFiniteLossError, match="epoch 1, step 1"):
        fit(model, data, 1, x=x, y=data.y[:BATCH])
    # The guard counts the fault; nothing else moves.
    assert_same_state(all_state(model), before, skip=("faults",))


# --- 5. across backends -------------------------------------------------------


@pytest.fixture(scope="module")
def other_backends(request):
    """`one_step` of the selected components in another backend: one child
    process per backend, for every component this session compares."""
    cache = {}
    name = test_one_step_agrees_across_backends.__name__
    wanted = {}
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if item.originalname == name and spec is not None:
            other = spec.params["other"]
            wanted.setdefault(other, []).append(spec.params["component"].id)

    def get(backend):
        if backend not in cache:
            ids = wanted.get(backend, [])
            cache[backend] = run_in_backend(
                backend,
                "import component_harness; "
                f"component_harness.main_one_step_all({ids!r})",
            )
        return cache[backend]

    return get


@pytest.mark.parametrize("component, other", pairs(MODEL_COMPONENTS))
def test_one_step_agrees_across_backends(component, other, other_backends):
    if other == BACKEND:
        pytest.skip("same backend")
    if importlib.util.find_spec(other) is None:
        pytest.skip(f"{other} is not installed")
    here = one_step(component)
    there = other_backends(other)[component.id]
    assert here["random"] == there["random"]
    assert here["history"].keys() == there["history"].keys()
    for key, value in here["history"].items():
        assert there["history"][key] == pytest.approx(
            value, rel=RTOL, abs=ATOL
        ), key
    if here["random"]:
        # The step draws noise (OGM-GE), which each backend's generator
        # draws differently: what the step measured before it (the losses
        # and the balancer's logs) is compared, the trained weights not.
        return
    assert len(here["variables"]) == len(there["variables"])
    for i, (a, b) in enumerate(zip(here["variables"], there["variables"])):
        np.testing.assert_allclose(
            a, b, rtol=RTOL, atol=ATOL, err_msg=f"variable {i}"
        )
    for h, logits in here["logits"].items():
        np.testing.assert_allclose(
            logits, there["logits"][h], rtol=RTOL, atol=ATOL, err_msg=h
        )
