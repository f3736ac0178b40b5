"""Send-to-tail latency through ``chatctl join``, beside a raw WebSocket reader.

One sender POSTs messages at a steady pace, each carrying its send time in its text. Two
readers watch the room in the same run: the real ``chatctl join -o jsonl`` subprocess
(what a user's pipeline sees) and a bare ``websockets`` client in this process (the floor:
the server's delivery alone). Latency is receive time minus the time written by the sender
just before its POST.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

from tests.bench.fanout_bench import wait_members
from tests.bench.harness import PYTHON, Mode, Row, chat_server, percentile, ratio_row
from tests.bench.server_bench import create_room
from tests.helpers import cli_env

RATE = 50  # messages per second


def tail(mode: Mode, workdir: Path) -> list[Row]:
    count = RATE * (4 if mode.quick else 20)
    with chat_server(workdir / "tail") as server, server.http() as c:
        room = create_room(c, "tail", ["sender"])
        cli_latency: list[float] = []
        raw_latency: list[float] = []
        tail_proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "chatctl",
                "join",
                room,
                "--user",
                "tail",
                "-o",
                "jsonl",
                "--count",
                str(count),
            ],
            env=cli_env(server),
            stdout=subprocess.PIPE,
            text=True,
        )

        def read_cli() -> None:
            assert tail_proc.stdout is not None
            for line in tail_proc.stdout:
                cli_latency.append(time.time() - float(json.loads(line)["text"]))

        uri = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
        with connect(uri) as raw:
            raw.send(json.dumps({"room_id": room, "user_id": "raw"}))

            def read_raw() -> None:
                while len(raw_latency) < count:
                    frame = json.loads(raw.recv(timeout=30))
                    if "message" in frame:
                        raw_latency.append(time.time() - float(frame["message"]["text"]))

            readers = [threading.Thread(target=f, daemon=True) for f in (read_cli, read_raw)]
            for t in readers:
                t.start()
            wait_members(c, room, 3)
            start = time.monotonic()
            for n in range(count):
                # Paced against the clock, not by sleeping a fixed gap after each POST.
                delay = start + n / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                text = f"{time.time():.6f}"
                c.post(
                    "/v1/chat/Send", json={"room_id": room, "user_id": "sender", "text": text}
                ).raise_for_status()
            tail_proc.wait(60)
            for t in readers:
                t.join(30)
    delivered = f"{len(cli_latency)}/{count} printed by chatctl, {len(raw_latency)}/{count} raw"
    ms = 1000.0
    rows = []
    for p in (50, 99):
        rows.append(
            ratio_row(
                f"send-to-tail through chatctl join: p{p}",
                percentile(cli_latency, p) * ms,
                "ms",
                f"raw websockets reader p{p}",
                percentile(raw_latency, p) * ms,
                note=f"{count} messages at {RATE}/s; {delivered}",
            )
        )
    rows.append(
        Row(
            "send-to-tail messages printed",
            len(cli_latency),
            "msgs",
            "sent",
            count,
            "all",
            len(cli_latency) == count,
        )
    )
    return rows
