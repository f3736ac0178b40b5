"""pyproject.toml's version ranges: the installed versions are in them, and each upper
bound says why it is there (the comment above it), so that raising one is a decision."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

from tests.seams import PYPROJECT


def _requirements(group: str | None) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [r for r in map(Requirement, listed) if r.marker is None or r.marker.evaluate()]


def test_the_installed_versions_are_the_ones_pyproject_allows() -> None:
    wrong = []
    for req in _requirements(None) + _requirements("test"):
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            wrong.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{req}: {installed} installed")
    assert not wrong, "pip install -e '.[test]' again: " + "; ".join(wrong)


def test_every_upper_bound_of_a_runtime_dependency_says_why() -> None:
    lines = PYPROJECT.read_text().splitlines()
    start = lines.index("dependencies = [")
    unexplained = []
    for at in range(start + 1, lines.index("]", start)):
        line = lines[at].strip()
        if not line.startswith('"') or lines[at - 1].strip().startswith("#"):
            continue
        if any(
            s.operator in ("<", "<=", "==", "~=") for s in Requirement(line.strip('",')).specifier
        ):
            unexplained.append(line)
    assert not unexplained, f"say why above each upper bound in pyproject.toml: {unexplained}"
