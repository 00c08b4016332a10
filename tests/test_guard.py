"""The non-finite guard: a step with a NaN or an infinity anywhere (the
loss, a head's loss, the gradients, the held-out losses, the balancer's
new state) applies nothing and stops training, naming what and where."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_olm
from tests.olm_testing import tiny_encoder

STEPS_PER_EPOCH = 4


def np_(v):
    return keras.ops.convert_to_numpy(v)


class Faulty(keras_olm.balancers.Balancer):
    """The heads' losses, with a NaN put into the slow encoder's gradients
    (`what="grads"`) or into the balancer's new state (`what="state"`) on
    step `at` (1-based)."""

    measures_steps = True
    transforms_gradients = True

    def __init__(self, what, at, **kwargs):
        super().__init__(**kwargs)
        self.what = what
        self.at = at

    def build_heads(self, head_names, num_classes):
        super().build_heads(head_names, num_classes)
        self.count = self.add_state("count", 0.0, shape=())
        self.value = self.add_state("value", 0.0, shape=())
        self.fault_at = self.add_state("fault_at", self.at, shape=())

    def _bad(self, n):
        return ops.where(n == self.fault_at.value, np.nan, 1.0)

    def transform_gradients(self, grads, variables, groups, step):
        if self.what == "grads":
            bad = self._bad(self.count.value + 1)
            slow = set(groups["slow"])
            grads = [g * bad if i in slow else g for i, g in enumerate(grads)]
        return grads, []

    def update(self, step):
        n = self.count.value + 1
        new = [(self.count, n)]
        if self.what == "state":
            new.append((self.value, n * self._bad(n)))
        return new


@pytest.fixture(scope="module")
def data():
    x, y = keras_olm.synthetic.make_imbalanced(
        32 * STEPS_PER_EPOCH, num_classes=4, seed=0
    )
    return x, y


def new_model(balancer, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(), "slow": tiny_encoder()},
        num_classes=4,
        balancer=balancer,
    )
    model.compile(optimizer="adam", steps_per_execution=steps_per_execution)
    return model


def everything(model):
    return [np_(v) for v in model.weights + model.optimizer.variables]


def assert_state_of(model, reference):
    """`model`'s weights, optimizer and balancer state are `reference`'s
    (trained on the good steps only), its training step count aside."""
    got, want = everything(model), everything(reference)
    assert len(got) == len(want)
    names = [v.path for v in reference.weights + reference.optimizer.variables]
    for value, expected, name in zip(got, want, names):
        if "faults" in name or "fault_at" in name:
            continue
        np.testing.assert_array_equal(value, expected, err_msg=name)


def fit(model, x, y, **kwargs):
    return model.fit(x, y, batch_size=32, shuffle=False, verbose=0, **kwargs)


@pytest.mark.parametrize(
    "steps_per_execution",
    [
        1,
        pytest.param(
            4,
            marks=pytest.mark.skipif(
                keras.backend.backend() == "torch",
                reason="Keras' torch trainer runs one step per execution",
            ),
        ),
    ],
)
@pytest.mark.parametrize(
    "what, named",
    [
        ("grads", "the gradients of the slow encoder"),
        ("state", "the balancer's new state"),
    ],
)
def test_fault_applies_nothing_and_names_part_and_step(
    data, what, named, steps_per_execution
):
    x, y = data
    model = new_model(Faulty(what, at=3), steps_per_execution)
    with pytest.raises(keras_olm.NonFiniteLossError) as error:
        fit(model, x, y, epochs=2)
    message = str(error.value)
    assert "epoch 1, step 3 " in message
    assert named in message
    assert "loss" not in message.split(" in: ")[1].split(".")[0]
    # The model stands as after the two good steps, however many steps
    # one compiled call ran.
    reference = new_model(Faulty(what, at=-1))
    fit(reference, {m: v[:64] for m, v in x.items()}, y[:64], epochs=1)
    assert_state_of(model, reference)
    assert int(np_(model.training_state.steps)) == 2
    assert float(np_(model.balancer.count)) == 2.0


def test_nan_input_is_caught_on_every_backend(data):
    """A NaN in one training input (ReLU encoders, where a NaN may not
    reach the loss) stops training with every weight finite."""
    x, y = data
    bad = {m: v.copy() for m, v in x.items()}
    bad["slow"][40, 0] = np.nan  # the 2nd batch
    model = new_model("heads")
    with pytest.raises(keras_olm.NonFiniteLossError, match="epoch 1, step 2"):
        fit(model, bad, y, epochs=1)
    reference = new_model("heads")
    fit(reference, {m: v[:32] for m, v in x.items()}, y[:32], epochs=1)
    assert_state_of(model, reference)


def test_non_finite_held_out_losses_are_named(data):
    x, y = data
    # Finite inputs whose logits overflow: the held-out losses are not
    # finite, the training losses are.
    held_out = ({m: np.full_like(v[:32], 3e38) for m, v in x.items()}, y[:32])
    model = new_model(
        keras_olm.OLM(held_out=keras_olm.balancers.HeldOutSchedule("step"))
    )
    with pytest.raises(
        keras_olm.NonFiniteLossError, match=r"step 1 .*held-out losses"
    ):
        fit(model, x, y, epochs=1, held_out_data=held_out)
    for v in model.weights:
        assert np.all(np.isfinite(np_(v))), v.path
    assert int(np_(model.balancer.steps)) == 0


def test_diverging_sgd_stops_with_finite_state(data):
    """A learning rate of 10: the step that overflows (its loss, logits
    norms or OLM's state) raises, and the model keeps finite values."""
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras_olm.BalancedMultimodalModel(
        {"fast": keras.layers.Dense(8), "slow": keras.layers.Dense(8)},
        num_classes=4,
    )
    model.compile(optimizer=keras.optimizers.SGD(10.0))
    with pytest.raises(keras_olm.NonFiniteLossError):
        fit(
            model,
            {m: v * 100 for m, v in x.items()},
            y,
            epochs=30,
            held_out_split=0.25,
        )
    for v in model.weights + model.optimizer.variables:
        assert np.all(np.isfinite(np_(v))), v.path


def test_fit_after_a_fault_starts_clean(data):
    x, y = data
    model = new_model(Faulty("state", at=3))
    with pytest.raises(keras_olm.NonFiniteLossError):
        fit(model, x, y, epochs=1)
    # The faulty step is past (the balancer counts 2): the next fit runs.
    model.balancer.fault_at.assign(-1.0)
    fit(model, x, y, epochs=1)
    assert int(np_(model.training_state.steps)) == 2 + STEPS_PER_EPOCH
    assert not np_(model.training_state.faults)[:-1].any()


def test_train_on_batch_raises_and_goes_on_after(data):
    x, y = data
    model = new_model(Faulty("state", at=2))
    batch = {m: v[:32] for m, v in x.items()}, y[:32]
    first = model.train_on_batch(*batch, return_dict=True)
    assert "non_finite" not in first and np.isfinite(first["loss"])
    with pytest.raises(
        keras_olm.NonFiniteLossError,
        match=r"global step 1 \(train_on_batch\).*balancer's new state",
    ):
        model.train_on_batch(*batch)
    assert int(np_(model.training_state.steps)) == 1
    model.balancer.fault_at.assign(-1.0)
    assert len(model.train_on_batch(*batch)) == len(model.metrics_names)
    assert int(np_(model.training_state.steps)) == 2
