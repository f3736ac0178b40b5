"""Checks of a dependency seam (a module of chatctl that uses a library's internals): each
failure is one line naming the module, the versions it supports and the installed one.

The seams and their tests: chatctl/server/protocol.py (uvicorn; tests/server/test_protocol.py),
chatctl/server/answers.py (Starlette; tests/server/test_starlette_seam.py),
chatctl/cli/typer_seam.py (Typer; tests/cli/test_typer_seam.py), the client's deadline
backend (httpx and httpcore; tests/test_httpx_seam.py). Each one's supported range is the
one pyproject.toml pins; tests/test_dependencies.py checks the pins themselves.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pinned(dist: str) -> Requirement:
    """pyproject.toml's requirement on ``dist`` (a runtime dependency)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    (req,) = [r for r in map(Requirement, project["dependencies"]) if r.name == dist]
    return req


@contextlib.contextmanager
def seam(module: str, dist: str, supported: str) -> Iterator[None]:
    """What the block checks is something ``module`` relies on in ``dist``: a failure
    (a name moved, a signature or a source line changed) is reported as one line saying
    which versions the module supports and which is installed."""
    try:
        yield
    except (AssertionError, AttributeError, ImportError, LookupError, TypeError) as exc:
        what = (str(exc) or type(exc).__name__).splitlines()[0]
    else:
        return
    raise pytest.fail.Exception(
        f"{module} is written for {dist}{supported}, and {dist} {version(dist)} is"
        f" installed: {what}. Adapt {module} to it (then widen the pin in pyproject.toml"
        " and SUPPORTED), or install a supported version.",
        pytrace=False,
    ) from None  # the one line says it all


def check_pin(module: str, dist: str, supported: str) -> None:
    """pyproject.toml pins ``dist`` to the module's ``supported`` range, and the installed
    version is in it."""
    pin = pinned(dist)
    assert str(pin.specifier) == str(Requirement(f"{dist}{supported}").specifier), (
        f"pyproject.toml pins {pin}, {module} supports {dist}{supported}: make them one"
    )
    with seam(module, dist, supported):
        assert pin.specifier.contains(version(dist)), f"outside {pin}"
