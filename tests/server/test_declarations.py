"""An endpoint is declared once (``schema.declare``, ``schema.ENDPOINTS``) and everything
else follows from it or must keep up: a new endpoint without its CLI command, its row in
the contract's access table, its OpenAPI path or its announced extension fails here; and
a new endpoint declared alone is routed, bound to a user token's user, validated and
documented without another line of server code."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from chatctl import schema
from chatctl.cli.main import run_cli
from chatctl.schema import ENDPOINTS, SERVER_EXTENSIONS, Endpoint, Field, declare
from chatctl.server.openapi import openapi_document
from chatctl.server.tokens import TokenRegistry
from chatctl.wire import encode
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS
from tests.server.conftest import LiveServer

CONTRACT = Path(__file__).parents[2] / "chatctl/server/m3o-chat-api.md"


def missing_parts(name: str) -> list[str]:
    """What a declared endpoint lacks of what is written by hand: its ``chatctl``
    command, its contract row, its announced extension; and its OpenAPI path (derived).

    Each of m3o's endpoints has a command of its own (its arguments, room names, paging,
    batches); an extension's may wait: ``chatctl call`` reaches it from its declaration
    (its help lists it, which is checked here)."""
    import typer.main

    from chatctl.cli.main import app

    missing = []
    command = typer.main.get_command(app)
    commands = command.commands  # type: ignore[attr-defined]
    listed = ENDPOINTS[name].extension is not None and name in call_help()
    # DeleteMessage's is delete-message: Typer's name for a function delete_message.
    own = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    if own not in commands and not listed:
        missing.append(f"no chatctl {name.lower()} (a command in chatctl/cli/)")
    rows = [line for line in CONTRACT.read_text().splitlines() if line.startswith(f"| {name} ")]
    if not rows:
        missing.append(f"no row for {name} in the contract's 'Who may do what' table")
    if f"/v1/chat/{name}" not in openapi_document()["paths"]:
        missing.append(f"no /v1/chat/{name} in the OpenAPI document")
    endpoint = ENDPOINTS[name]
    if endpoint.extension is not None and endpoint.extension not in SERVER_EXTENSIONS:
        missing.append(f"extension {endpoint.extension} not in schema.SERVER_EXTENSIONS")
    return missing


def call_help() -> str:
    """``chatctl call --help``'s list of endpoints, as built now."""
    import typer.main

    from chatctl.cli.main import app

    call = typer.main.get_command(app).commands["call"]  # type: ignore[attr-defined]
    return str(call.help).split("Endpoints: ", 1)[1].split(".", 1)[0]


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_has_its_command_row_path_and_extension(name: str) -> None:
    assert missing_parts(name) == []


def test_the_cli_registers_every_endpoint_command_in_a_room_s_life_order() -> None:
    """cli/main.py registers each endpoint's command without a list to keep up: a new
    one comes after the known ones, which keep their order in ``chatctl --help``."""
    import typer.main

    from chatctl.cli.main import app

    commands = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    endpoints = [
        c for c in commands if c.title().replace("-", "") in ENDPOINTS or c == "list"
    ]
    assert endpoints == [
        "create",
        "invite",
        "send",
        "history",
        "list",
        "join",
        "kick",
        "leave",
        "delete-message",
        "delete",
        "retain",
        "import",
        "whoami",
    ]


#: A dummy extension endpoint, declared as a new one would be: a room, and the acting user.
ECHO = Endpoint(
    "Echo",
    "Answer with the request as the server takes it",
    (
        Field("room_id", "string", "The room.", "missing room id", alias="group_id"),
        Field("user_id", "string", "The acting user.", None, "max_user_id_chars"),
    ),
    "identity",
    False,
    actor=True,
    extension="echo",
)


@pytest.fixture
def echo() -> Iterator[Endpoint]:
    declare(ECHO)
    try:
        yield ECHO
    finally:
        del schema.ENDPOINTS["Echo"], schema._BY_LOWER["echo"]


def test_an_endpoint_declared_alone_is_routed_bound_validated_and_documented(
    echo: Endpoint, live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice tenant=acme user=alice\ntok-admin tenant=acme admin\n")
    os.chmod(tokens, 0o600)
    srv = live_server(registry=TokenRegistry(tokens))
    # Its rule: the one thing a new endpoint adds to the server (here, the request back).
    service = srv.app.state.service
    call = service.call
    seen: list[dict[str, Any]] = []

    async def answer(endpoint: str, tenant: str, request: dict[str, Any], *a: Any, **k: Any) -> Any:
        if endpoint != "Echo":
            return await call(endpoint, tenant, request, *a, **k)
        seen.append(request)
        return encode({"identity": {"tenant": tenant, **request}})

    service.call = answer

    def post(token: str, body: dict[str, Any], path: str = "/v1/chat/Echo") -> httpx.Response:
        return httpx.post(
            srv.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    # Routed (m3o's gateway matched paths case-insensitively), the actor bound.
    for path in ("/v1/chat/Echo", "/v1/chat/echo"):
        r = post("tok-alice", {"room_id": "r1"}, path)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "identity": {"tenant": "tenant:acme", "room_id": "r1", "user_id": "alice"}
        }
    # A user token cannot act as another user on it; an admin token can.
    r = post("tok-alice", {"room_id": "r1", "user_id": "bob"})
    assert (r.status_code, r.json()["id"]) == (403, "chat.echo"), r.text
    assert r.json()["detail"] == "this token acts only as user alice, not bob"
    assert (
        post("tok-admin", {"room_id": "r1", "user_id": "bob"}).json()["identity"]["user_id"]
        == "bob"
    )
    # Validated, in m3o's words and in the edition it names the room in.
    r = post("tok-alice", {})
    assert (r.status_code, r.json()["detail"]) == (400, "missing room id")
    r = post("tok-alice", {"group_id": ""})
    assert (r.status_code, r.json()["detail"]) == (400, "missing group id")
    assert len(seen) == 3
    # Documented.
    document = httpx.get(srv.url + "/openapi.json", timeout=10).json()
    assert "/v1/chat/Echo" in document["paths"]
    assert set(document["components"]["schemas"]["EchoRequest"]["properties"]) == {
        "room_id",
        "group_id",
        "user_id",
    }
    # And what is written by hand for it is missing, which the test above would say (its
    # command is not: chatctl call reaches it, tested below).
    assert missing_parts("Echo") == [
        "no row for Echo in the contract's 'Who may do what' table",
        "extension echo not in schema.SERVER_EXTENSIONS",
    ]


def test_an_endpoint_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        declare(ENDPOINTS["Send"])


def test_an_endpoint_declared_alone_is_listed_and_called_by_the_cli(
    echo: Endpoint,
    cli: Run,
    httpx_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI reaches the declared Echo without a command of its own: ``chatctl call``
    lists it (help, completion) and sends it as the user the token acts as, only to a
    server announcing its extension (the exact requests: pytest-httpx)."""
    assert "Echo" in call_help().split(", ")
    r = cli("call", "--help")
    assert r.code == 0 and "Echo" in r.stdout
    monkeypatch.setenv("_CHATCTL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "chatctl call E")
    monkeypatch.setenv("COMP_CWORD", "2")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli([])
    assert capsys.readouterr().out.split() == ["Echo"]
    for name in ("_CHATCTL_COMPLETE", "COMP_WORDS", "COMP_CWORD"):
        monkeypatch.delenv(name)

    url = "http://chat.test"
    monkeypatch.setenv("CHATCTL_URL", url)
    monkeypatch.setenv("CHATCTL_TOKEN", "tok-alice")
    extensions = CHATCTL_HEADERS["Chat-Extensions"] + ", echo"
    header = {"Chat-Extensions": extensions}
    alice = {"identity": {"tenant": "acme", "user_id": "alice", "admin": False, "open": False}}
    httpx_mock.add_response(url=f"{url}/v1/chat/List", json={"rooms": []}, headers=header)
    httpx_mock.add_response(url=f"{url}/v1/chat/Whoami", json=alice, headers=header)
    echoed = {"identity": {"room_id": "r1", "user_id": "alice"}}
    httpx_mock.add_response(url=f"{url}/v1/chat/Echo", json=echoed, headers=header)
    r = cli("call", "echo", '{"room_id": "r1"}', "-o", "json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout) == echoed
    echo_request = httpx_mock.get_requests()[-1]
    assert (echo_request.method, echo_request.url.path) == ("POST", "/v1/chat/Echo")
    assert json.loads(echo_request.content) == {"room_id": "r1", "user_id": "alice"}


def test_a_declared_extension_endpoint_is_not_sent_to_a_server_without_it(
    echo: Endpoint, cli: Run, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://chat.test"
    monkeypatch.setenv("CHATCTL_URL", url)
    monkeypatch.setenv("CHATCTL_USER", "alice")
    httpx_mock.add_response(url=f"{url}/v1/chat/List", json={"rooms": []}, headers=CHATCTL_HEADERS)
    r = cli("call", "Echo", '{"room_id": "r1"}')
    assert (r.code, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0] == f"error: {url} does not support echo (Echo request)"
    assert [q.url.path for q in httpx_mock.get_requests()] == ["/v1/chat/List"]
