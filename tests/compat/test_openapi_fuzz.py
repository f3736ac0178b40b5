"""``GET /openapi.json`` says what the server does: a bounded schemathesis run (every check,
every phase, the streams Join and JoinRooms left out) against a real ``chatctl serve``, the
document checked as OpenAPI 3.1 with openapi-spec-validator, and each gap issues 14 and 23
name probed directly.

schemathesis runs as its own command (``python -m schemathesis.cli run``), as a user would
run it, with its defaults and no configuration file: nothing but the server's address,
the token, and the run's size (examples per operation, a fixed seed) is given. No test
process imports it; its pytest plugin is kept out of every run by ``-p no:schemathesis``
in pyproject's addopts. One run (15-30 s on a loaded box) feeds the tests through its
JSON report, which must hold no failure of any check. Its phases: coverage (each field's
edges, the length limits' too: characters, as the server counts them), fuzzing, and
stateful (Create's links give the other calls a real room, Invite's link a Send by the
member it invited, Send's a DeleteMessage by its author; with this run's size a Send
through that chain is rare, so the link is also followed directly). Join and JoinRooms are
left out: a stream has no end for a fuzzer to judge. A fuzzer finds some gaps only with
some seeds, so each gap is also probed directly, deterministically.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.compat.conftest import loopback_env
from tests.helpers import ServerProcess

TOKEN = "schemathesis-token"
#: Cases per operation and phase; with a fixed seed the run is much the same each time.
MAX_EXAMPLES = 25
SEED = 20260101
UNARY = ("Create", "Delete", "Invite", "Send", "History", "Kick", "List", "Leave")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The fuzzer sends about 60 requests/s from one token: rate limits are not its subject.
    workdir = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(workdir, tcp=True, tokens=[TOKEN], extra=["--rate-limit", "off"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def fuzz_report(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("schemathesis")
    report = work / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        "--exclude-operation-id=Join",
        "--exclude-operation-id=JoinRooms",
        f"--header=Authorization: Bearer {TOKEN}",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--workers=1",
        "--request-timeout=10",
        "--report=json",
        f"--report-json-path={report}",
    ]
    # cwd: schemathesis keeps its own files (.hypothesis, .schemathesis) beside it.
    proc = subprocess.run(
        command,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        env=loopback_env(NO_COLOR="1"),
    )
    if not report.exists():
        pytest.fail(f"schemathesis wrote no report ({proc.returncode}): {proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["output"] = proc.stdout
    return data


def test_the_run_is_complete_and_bounded(fuzz_report: dict[str, Any]) -> None:
    assert fuzz_report["complete"] and fuzz_report["errors"] == [], fuzz_report["output"][-3000:]
    assert fuzz_report["operations"]["tested"] == 14  # the twelve calls, /health and /ready
    assert fuzz_report["test_cases"]["generated"] > 100
    assert fuzz_report["running_time"] < 60


def test_every_phase_ran(fuzz_report: dict[str, Any]) -> None:
    """The stateful phase needs the document's links (Create's room to the other calls):
    without them it is skipped, and the calls never see a room that exists."""
    ran = {name: phase["status"] for name, phase in fuzz_report["phases"].items()}
    # examples: the document gives none, so that phase has nothing to send.
    assert ran == {
        "examples": "skip",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }, fuzz_report["output"][-3000:]


def test_no_failures_of_any_check(fuzz_report: dict[str, Any]) -> None:
    """The must-show line itself: a bounded run with no failure of any check."""
    assert fuzz_report["failures"] == [], fuzz_report["output"][-6000:]
    assert fuzz_report["exit_code"] == 0


def test_openapi_document_is_valid_openapi_31(server: ServerProcess) -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    doc = document(server)
    assert doc["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(doc).validate()


def test_the_fuzzer_is_not_imported_by_the_test_process() -> None:
    """Its pytest plugin would import it (0.3 s) in every run: addopts has -p no:schemathesis."""
    assert "schemathesis" not in sys.modules


# -- each gap, probed directly ------------------------------------------------------------


def document(server: ServerProcess) -> dict[str, Any]:
    with httpx.Client(timeout=10) as client:
        doc: dict[str, Any] = client.get(f"{server.url}/openapi.json").json()
    return doc


def request_schema(doc: dict[str, Any], endpoint: str) -> dict[str, Any]:
    body = doc["paths"][f"/v1/chat/{endpoint}"]["post"]["requestBody"]
    ref: str = body["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def allows_null(prop: dict[str, Any]) -> bool:
    kind = prop.get("type")
    if prop.get("nullable") or kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(allows_null(branch) for branch in prop.get("anyOf", []) + prop.get("oneOf", []))


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.http(TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def room(api: httpx.Client) -> str:
    created = api.post("/v1/chat/Create", json={"name": "probe", "user_ids": ["alice"]})
    rid: str = created.json()["room"]["id"]
    return rid


def test_other_methods_on_an_endpoint_answer_405_with_allow(api: httpx.Client) -> None:
    wrong = {}
    for endpoint in (*UNARY, "Join"):
        for method in ("GET", "PUT", "DELETE", "PATCH", "TRACE"):
            r = api.request(method, f"/v1/chat/{endpoint}")
            if r.status_code != 405 or "POST" not in r.headers.get("allow", ""):
                wrong[f"{method} {endpoint}"] = (r.status_code, r.headers.get("allow"))
    assert wrong == {}


def test_the_document_refuses_the_empty_strings_the_server_refuses(
    server: ServerProcess, api: httpx.Client, room: str
) -> None:
    doc = document(server)
    plausible = {"room_id": room, "group_id": room, "user_id": "alice", "text": "x"}
    disagree = []
    for endpoint in UNARY:
        schema = request_schema(doc, endpoint)
        for field in schema.get("required", []):
            prop = schema["properties"][field]
            if prop.get("type") != "string":
                continue
            body = {f: plausible.get(f, "x") for f in schema["required"]} | {field: ""}
            refused = api.post(f"/v1/chat/{endpoint}", json=body).status_code == 400
            if refused != (prop.get("minLength", 0) >= 1):
                disagree.append((endpoint, field, "server refuses" if refused else "doc refuses"))
    assert disagree == []


def test_the_document_bounds_the_idempotency_key_as_the_server_does(
    server: ServerProcess, api: httpx.Client
) -> None:
    for key in ("", "k" * 256):
        r = api.post("/v1/chat/Create", json={"name": "k"}, headers={"Idempotency-Key": key})
        assert r.status_code == 400, (key, r.text)
    params = document(server)["components"]["parameters"].values()
    (key_schema,) = [p["schema"] for p in params if p["name"] == "Idempotency-Key"]
    assert (key_schema.get("minLength"), key_schema.get("maxLength")) == (1, 255)


def test_a_body_the_server_requires_is_required_in_the_document(
    server: ServerProcess, api: httpx.Client
) -> None:
    doc = document(server)
    disagree = []
    for endpoint in UNARY:
        refused = api.post(f"/v1/chat/{endpoint}").status_code == 400
        body = doc["paths"][f"/v1/chat/{endpoint}"]["post"]["requestBody"]
        if refused != bool(body.get("required")):
            disagree.append(endpoint)
    assert disagree == []


def test_null_is_refused_or_documented(server: ServerProcess, api: httpx.Client, room: str) -> None:
    doc = document(server)
    valid = {
        "Create": {"name": "n"},
        "Invite": {"room_id": room, "user_id": "bob"},
        "Send": {"room_id": room, "user_id": "alice", "text": "x"},
        "History": {"room_id": room},
        "Kick": {"room_id": room, "user_id": "bob"},
        "List": {},
    }
    disagree = []
    for endpoint, body in valid.items():
        schema = request_schema(doc, endpoint)
        for field, prop in schema["properties"].items():
            if field in body:
                continue
            accepted = api.post(f"/v1/chat/{endpoint}", json=body | {field: None}).is_success
            if accepted != allows_null(prop):
                disagree.append((endpoint, field, "accepted" if accepted else "refused"))
    assert disagree == []


def test_length_limits_count_characters_as_max_length_does(
    server: ServerProcess, api: httpx.Client
) -> None:
    """Issue 23: the limits were UTF-8 bytes under a maxLength (characters), so 129 'é'
    in a user id (258 bytes) were schema-valid and refused. Now both count characters."""
    items = request_schema(document(server), "Create")["properties"]["user_ids"]["items"]
    bound = items["maxLength"]
    for user, status in (("é" * bound, 200), ("😀" * bound, 200), ("é" * (bound + 1), 400)):
        r = api.post("/v1/chat/Create", json={"user_ids": [user]})
        assert r.status_code == status, (len(user), r.text)
    assert r.json()["detail"] == (
        f"user_ids is longer than the limit of {bound} characters (max_user_id_chars)"
    )


def test_an_empty_user_id_is_refused_where_the_document_refuses_it(
    server: ServerProcess, api: httpx.Client
) -> None:
    """A member "" could never be named again ("" is a missing user id): the stateful
    phase made one, then its Send as "" was refused."""
    items = request_schema(document(server), "Create")["properties"]["user_ids"]["items"]
    assert items["minLength"] == 1
    r = api.post("/v1/chat/Create", json={"user_ids": ["a", ""]})
    assert r.status_code == 400 and r.json()["detail"] == "user_ids must not hold an empty string"


def resolve(expression: Any, request: dict[str, Any], response: dict[str, Any]) -> Any:
    """An OpenAPI runtime expression of the two kinds the document's links use."""
    if not isinstance(expression, str) or not expression.startswith("$"):
        return expression
    source, _, pointer = expression.partition("#")
    value: Any = {"$request.body": request, "$response.body": response}[source]
    for part in pointer.strip("/").split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def test_the_links_lead_a_send_only_to_a_member(
    server: ServerProcess, api: httpx.Client, room: str
) -> None:
    """Issue 23: the stateful phase followed Create's link to Send with a user of its own
    making (400 user is not in the room). Create links no Send now; Invite's link gives a
    whole SendRequest by the user it invited, all or nothing."""
    doc = document(server)
    create_links = doc["paths"]["/v1/chat/Create"]["post"]["responses"]["200"]["links"]
    assert "Send" not in {link["operationId"] for link in create_links.values()}
    (link,) = doc["paths"]["/v1/chat/Invite"]["post"]["responses"]["200"]["links"].values()
    assert link["operationId"] == "Send"
    assert link["x-schemathesis"] == {"merge_body": False}
    invite = {"room_id": room, "user_id": "invited-by-the-link"}
    invited = api.post("/v1/chat/Invite", json=invite)
    assert invited.status_code == 200, invited.text
    body = {k: resolve(v, invite, invited.json()) for k, v in link["requestBody"].items()}
    sent = api.post("/v1/chat/Send", json=body)
    assert sent.status_code == 200, sent.text
    assert sent.json()["message"]["user_id"] == "invited-by-the-link"


def test_sends_link_deletes_the_message_as_its_author(
    server: ServerProcess, api: httpx.Client, room: str
) -> None:
    """DeleteMessage took only ids of the fuzzer's making (404): Send's answer now links to
    it with the message's own room, id and author, all or nothing."""
    doc = document(server)
    (link,) = doc["paths"]["/v1/chat/Send"]["post"]["responses"]["200"]["links"].values()
    assert link["operationId"] == "DeleteMessage"
    assert link["x-schemathesis"] == {"merge_body": False}
    send = {"room_id": room, "user_id": "alice", "text": "to be taken back"}
    sent = api.post("/v1/chat/Send", json=send)
    assert sent.status_code == 200, sent.text
    body = {k: resolve(v, send, sent.json()) for k, v in link["requestBody"].items()}
    deleted = api.post("/v1/chat/DeleteMessage", json=body)
    assert deleted.status_code == 200, deleted.text
    history = api.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert sent.json()["message"]["id"] not in {m["id"] for m in history}
