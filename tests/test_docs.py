"""The docs: links stay in the repository, the log-key table matches what
`fit` logs, and every public name has an API reference entry."""

import importlib
import pathlib
import re

import keras
import pytest

import keras_olm
from keras_olm.balancers import HeadStopping
from keras_olm.synthetic import make_imbalanced

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LOGS_PAGE = ROOT / "docs" / "guide" / "logs.md"
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
# The modules whose `__all__` the API reference covers.
PUBLIC_MODULES = (
    "keras_olm",
    "keras_olm.balancers",
    "keras_olm.layers",
    "keras_olm.callbacks",
    "keras_olm.data",
    "keras_olm.embedded",
)


def test_docs_link_only_to_files_in_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).resolve().is_relative_to(ROOT), (
                doc,
                target,
            )
            assert (doc.parent / target).exists(), (doc, target)


def test_the_readme_points_to_the_olm_equations():
    assert "docs/olm.md" in (ROOT / "README.md").read_text()
    olm = (ROOT / "docs" / "olm.md").read_text()
    for equation in ("(Eq. 6)", "(Eq. 7)", "(Eq. 8)", "(Eq. 2)", "(Eq. 4)"):
        assert equation in olm


def log_key_rows():
    """`(key pattern, logged when)` of every row of the log-key table."""
    text = LOGS_PAGE.read_text()
    section = text.split("## Every log key", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, re.M)
    assert len(rows) > 10, "the log-key table was not found"
    return [(key, when.strip()) for key, when in rows]


def key_regex(pattern, placeholders):
    """The row's key pattern as a regex, its placeholders replaced."""
    parts = re.split(r"(<\w+>)", pattern)
    regex = ""
    for part in parts:
        if part.startswith("<"):
            assert part in placeholders, (pattern, part)
            regex += "(?:" + "|".join(placeholders[part]) + ")"
        else:
            regex += re.escape(part)
    return re.compile(regex + r"\Z")


def tiny_encoder():
    return keras.Sequential([keras.layers.Dense(8, activation="relu")])


@pytest.mark.parametrize(
    "balancer",
    ["olm", "heads", None, "head_stopping"],
    ids=["olm", "heads", "joint", "heads_with_head_stopping"],
)
def test_every_logged_key_has_a_row_in_the_log_table(balancer):
    if balancer == "head_stopping":
        balancer = keras_olm.Balancer(head_stopping=HeadStopping(patience=1))
    keras.utils.set_random_seed(0)
    x, y = make_imbalanced(96, seed=0)
    x_val, y_val = make_imbalanced(32, seed=1)
    (x, y), held_out = keras_olm.split_held_out((x, y), 0.25, seed=0)
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(), "slow": tiny_encoder()},
        num_classes=4,
        balancer=balancer,
    )
    # Eager steps: the keys are those of the compiled step, without the
    # tracing (two traces for OLM: with and without a held-out batch).
    model.compile(optimizer="adam", metrics=["accuracy"], run_eagerly=True)
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=1,
        held_out_data=held_out,
        validation_data=(x_val, y_val),
        verbose=0,
    )
    placeholders = {
        "<modality>": ["fast", "slow"],
        "<head>": ["fast", "slow", "fused"],
        "<metric>": ["accuracy"],
        "<target>": [],
    }
    rows = [
        (key_regex(key, placeholders), when) for key, when in log_key_rows()
    ]
    keys = list(history.history)
    for key in keys:
        assert any(regex.match(key) for regex, _ in rows), (
            f"{key!r} is logged but has no row in {LOGS_PAGE.name}"
        )
    for regex, when in rows:
        if when == "always":
            assert any(regex.match(key) for key in keys), (
                f"the row {regex.pattern!r} says 'always' but {keys} "
                "has no such key"
            )


def api_targets():
    """Every `::: target` of the API pages."""
    targets = set()
    for page in API_PAGES:
        targets.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    return targets


def resolve(target):
    """The object a `:::` target names, imported."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(target)


def test_every_api_directive_names_an_object():
    targets = api_targets()
    assert targets
    for target in targets:
        assert target.startswith("keras_olm"), target
        resolve(target)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_an_api_entry(module_name):
    module = importlib.import_module(module_name)
    targets = api_targets()
    missing = []
    for name in module.__all__:
        documented = f"{module_name}.{name}" in targets or (
            name in keras_olm.__all__
            and getattr(keras_olm, name) is getattr(module, name)
            and f"keras_olm.{name}" in targets
        )
        if not documented:
            missing.append(name)
    assert not missing, f"no ::: entry in docs/api for {module_name}: {missing}"
