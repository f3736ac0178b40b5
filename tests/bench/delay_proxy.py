"""A TCP proxy in its own process: puts a network hop (a fixed delay each way) between a
server and its database, and can stop forwarding on command (the database "paused").

``python -m tests.bench.delay_proxy --target HOST:PORT [--delay-ms 1] [--port P]`` prints
``READY <port>``, then obeys lines on stdin: ``pause`` (stop forwarding both ways;
connections stay open and bytes wait, as with a database that stopped answering) and
``resume``, and ``drop`` (close every connection it relays, as a database that restarts
or fails over does; new ones are taken, and wait while paused), each acknowledged with a
line ``ok <command>``. It exits when stdin closes.

A pipeline, not stop-and-wait: per direction, one task reads and stamps each chunk with
its due time (arrival + delay) and another writes it once due, so many chunks are in
flight at once and the delay adds latency without limiting throughput, as a longer wire
does. In-process users start it with :class:`DelayProxy`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import socket
import subprocess
import sys
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from tests.bench.harness import run_fast

PYTHON = sys.executable
#: bytes one read takes at most; a chunk is forwarded whole.
CHUNK = 1 << 16


class _Direction:
    """One way of one connection: chunks queued with their due times, written in order."""

    def __init__(self, delay: float, running: asyncio.Event) -> None:
        self.delay = delay
        self.running = running
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = asyncio.Event()
        self.eof = False

    async def read(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(CHUNK):
                self.queue.append((loop.time() + self.delay, data))
                self.ready.set()
        except OSError:
            pass
        finally:
            self.eof = True
            self.ready.set()

    async def write(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                await self.running.wait()
                due = self.queue[0][0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                # Everything due by now goes out in one write.
                now = loop.time()
                out = []
                while self.queue and self.queue[0][0] <= now:
                    out.append(self.queue.popleft()[1])
                writer.write(b"".join(out))
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass  # RuntimeError: the transport was closed under it (``drop``)


async def _relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    target: tuple[str, int],
    delay: float,
    running: asyncio.Event,
) -> None:
    c_reader, c_writer = client
    try:
        s_reader, s_writer = await asyncio.open_connection(*target)
    except OSError:
        c_writer.close()
        return
    for w in (c_writer, s_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up, down = _Direction(delay, running), _Direction(delay, running)
    tasks = [
        asyncio.create_task(up.read(c_reader)),
        asyncio.create_task(up.write(s_writer)),
        asyncio.create_task(down.read(s_reader)),
        asyncio.create_task(down.write(c_writer)),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        for w in (c_writer, s_writer):
            w.close()


async def main(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    delay = args.delay_ms / 1000
    running = asyncio.Event()
    running.set()
    relays: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        relays.add(task)
        try:
            await _relay((reader, writer), target, delay, running)
        except asyncio.CancelledError:
            pass  # the proxy is exiting: end quietly (the streams module logs a cancel)
        finally:
            relays.discard(task)

    server = await asyncio.start_server(accept, "127.0.0.1", args.port)
    listening = server.sockets[0].getsockname()[1]
    print(f"READY {listening}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_command() -> None:
        line = sys.stdin.readline()
        command = line.strip()
        if not line:
            done.set()
            return
        if command == "pause":
            running.clear()
        elif command == "resume":
            running.set()
        elif command == "drop":
            for t in list(relays):
                t.cancel()
        else:
            print(f"unknown command {command!r}", flush=True)
            return
        print(f"ok {command}", flush=True)

    loop.add_reader(sys.stdin.fileno(), on_command)
    async with server:
        await done.wait()
    for t in list(relays):
        t.cancel()


class DelayProxy:
    """The proxy as a subprocess, for ``with``: ``port``, ``url_for(url)``, ``pause()``,
    ``resume()``, ``drop()``. ``delay_ms`` each way (0: a plain relay that can pause)."""

    def __init__(self, target_host: str, target_port: int, delay_ms: float = 0.0) -> None:
        self.args = [
            PYTHON,
            "-m",
            "tests.bench.delay_proxy",
            "--target",
            f"{target_host}:{target_port}",
            "--delay-ms",
            str(delay_ms),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @classmethod
    def to(cls, url: str, delay_ms: float = 0.0) -> DelayProxy:
        """A proxy to the host and port of a ``postgresql://`` URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, delay_ms)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def __enter__(self) -> DelayProxy:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self._stdout.readline()
        if not line.startswith("READY "):
            self.__exit__()
            raise AssertionError(f"delay proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def _stdout(self) -> TextIO:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout

    def _command(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._stdout.readline().strip()
        if answer != f"ok {command}":
            raise AssertionError(f"delay proxy answered {answer!r} to {command!r}")

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def drop(self) -> None:
        self._command("drop")

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added each way")
    p.add_argument("--port", type=int, default=0, help="to listen on (default: any free)")
    # The proxy stands for a wire: the less CPU it takes from the servers the better.
    run_fast(main(p.parse_args()))


if __name__ == "__main__":
    run()
