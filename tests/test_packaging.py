"""Packaging metadata: ranges, the tested constraints, the version."""

import pathlib
import re

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import keras_olm

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _requirements():
    project = _pyproject()["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for items in project["optional-dependencies"].values():
        requirements += [
            Requirement(r) for r in items if not r.startswith("keras-olm")
        ]
    return requirements


def test_dependencies_are_ranges_not_exact_pins():
    for requirement in _requirements():
        specifiers = [s.operator for s in requirement.specifier]
        assert "==" not in specifiers, requirement


def test_the_constraints_pin_every_dependency_inside_its_range():
    pins = _constraints()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name]), (
            requirement,
            pins[name],
        )


def test_one_version_everywhere():
    version = keras_olm.__version__
    assert _pyproject()["project"]["dynamic"] == ["version"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == version
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"version = \{" + re.escape(version) + r"\}", readme)
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
