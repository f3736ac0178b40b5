"""An endpoint is declared once (``schema.ENDPOINTS``) and everything else follows from
it or must keep up: a new endpoint without its CLI command, its row in the contract's
access table, its OpenAPI path or its announced extension fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatctl.schema import ENDPOINTS, SERVER_EXTENSIONS
from chatctl.server.openapi import openapi_document

CONTRACT = Path(__file__).parents[2] / "chatctl/server/m3o-chat-api.md"


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_has_its_command_row_path_and_extension(name: str) -> None:
    import typer.main

    from chatctl.cli.main import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert name.lower() in commands, f"no chatctl {name.lower()}"
    rows = [line for line in CONTRACT.read_text().splitlines() if line.startswith(f"| {name} ")]
    assert rows, f"no row for {name} in the contract's 'Who may do what' table"
    assert f"/v1/chat/{name}" in openapi_document()["paths"]
    endpoint = ENDPOINTS[name]
    if endpoint.extension is not None:
        assert endpoint.extension in SERVER_EXTENSIONS
