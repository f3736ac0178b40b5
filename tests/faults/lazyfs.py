"""A FUSE filesystem that forgets what was not fsynced: the power-loss drill's disk.

    python -m tests.faults.lazyfs BACKING MOUNTPOINT

LazyFS's model (a page cache the test controls), in Python over mfusepy: every file of
MOUNTPOINT is the file of the same name in BACKING (the "disk") with the writes and
truncations made since its last fsync held in this process's memory on top. ``fsync``
(and ``fdatasync``) of a file writes its pending changes through to BACKING; nothing
else does, not ``close``, not a clean unmount. A power cut is ``kill -9`` of this process
(after the programs using the mount): what it held is gone, BACKING keeps what was
fsynced, and mounting again shows exactly that. Names (create, unlink, rename, mkdir) go
to BACKING at once, as LazyFS passes metadata through: the drill is about data.

Everything runs under one lock (FUSE calls it from several threads): a disk for a drill,
not for speed.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from typing import Any

import mfusepy as fuse

#: the unit pending writes are kept in (a read-modify-write of the disk's bytes).
BLOCK = 4096


class _Pending:
    """One file's changes since its last fsync: its size now, the blocks written since,
    and how far the disk's bytes still count (a truncation below that hides the rest)."""

    def __init__(self, disk_size: int) -> None:
        self.size = disk_size
        self.floor = disk_size
        self.blocks: dict[int, bytearray] = {}


class LazyFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        self._mutex = threading.Lock()
        self.pending: dict[str, _Pending] = {}
        self.fds: dict[str, int] = {}  # one O_RDWR descriptor of BACKING per file in use
        self.opened: dict[str, int] = {}
        self.synced = 0

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(self._real(path), os.O_RDWR)
        return fd

    def _disk_block(self, path: str, index: int, floor: int) -> bytearray:
        data = bytearray(os.pread(self._fd(path), BLOCK, index * BLOCK))
        visible = max(0, floor - index * BLOCK)
        if visible < len(data):
            data[visible:] = bytes(len(data) - visible)
        data.extend(bytes(BLOCK - len(data)))
        return data

    # -- names and attributes: through to the disk at once ----------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            try:
                st = os.lstat(self._real(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno) from None
            attrs: dict[str, Any] = {
                key: getattr(st, key)
                for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")
            }
            # use_ns: times in nanoseconds
            attrs["st_atime"], attrs["st_mtime"], attrs["st_ctime"] = (
                st.st_atime_ns,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
            pending = self.pending.get(path)
            if pending is not None:
                attrs["st_size"] = pending.size
            return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._real(path))
        return {key: getattr(sv, key) for key in dir(sv) if key.startswith("f_")}

    def unlink(self, path: str) -> int:
        with self._mutex:
            os.unlink(self._real(path))
            self.pending.pop(path, None)
            fd = self.fds.pop(path, None)
            if fd is not None:
                os.close(fd)
            self.opened.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            os.rename(self._real(old), self._real(new))
            for table in (self.pending, self.fds, self.opened):
                if old in table:
                    table[new] = table.pop(old)  # type: ignore[index]
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            os.close(os.open(self._real(path), os.O_WRONLY | os.O_CREAT, mode))
            self.opened[path] = self.opened.get(path, 0) + 1
        return 0

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            if not os.path.exists(self._real(path)):
                raise fuse.FuseOSError(errno.ENOENT)
            self.opened[path] = self.opened.get(path, 0) + 1
            if flags & os.O_TRUNC:
                self._truncate(path, 0)
        return 0

    def release(self, path: str, fh: int) -> int:
        # Closing a file syncs nothing: its pending changes stay pending.
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    # -- data: in memory until fsync --------------------------------------------------

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            pending = self.pending.get(path)
            if pending is None:
                return os.pread(self._fd(path), size, offset)
            end = min(offset + size, pending.size)
            out = bytearray()
            position = offset
            while position < end:
                index, start = divmod(position, BLOCK)
                block = pending.blocks.get(index)
                if block is None:
                    block = self._disk_block(path, index, pending.floor)
                take = min(BLOCK - start, end - position)
                out += block[start : start + take]
                position += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            pending = self._pending(path)
            position, done = offset, 0
            while done < len(data):
                index, start = divmod(position, BLOCK)
                block = pending.blocks.get(index)
                if block is None:
                    block = pending.blocks[index] = self._disk_block(path, index, pending.floor)
                take = min(BLOCK - start, len(data) - done)
                block[start : start + take] = data[done : done + take]
                position += take
                done += take
            pending.size = max(pending.size, offset + len(data))
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            self._truncate(path, length)
        return 0

    def _pending(self, path: str) -> _Pending:
        pending = self.pending.get(path)
        if pending is None:
            pending = self.pending[path] = _Pending(os.fstat(self._fd(path)).st_size)
        return pending

    def _truncate(self, path: str, length: int) -> None:
        pending = self._pending(path)
        for index in [i for i in pending.blocks if i * BLOCK >= length]:
            del pending.blocks[index]
        last = pending.blocks.get(length // BLOCK)
        if last is not None:
            cut = length % BLOCK
            last[cut:] = bytes(BLOCK - cut)
        pending.floor = min(pending.floor, length)
        pending.size = length

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            pending = self.pending.pop(path, None)
            if pending is None:
                return 0
            fd = self._fd(path)
            if os.fstat(fd).st_size > pending.floor:
                os.ftruncate(fd, pending.floor)
            for index, block in sorted(pending.blocks.items()):
                start = index * BLOCK
                os.pwrite(fd, bytes(block[: max(0, min(BLOCK, pending.size - start))]), start)
            os.ftruncate(fd, pending.size)
            self.synced += 1
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # names are on the disk already


def main() -> None:
    backing, mountpoint = sys.argv[1:]
    fuse.FUSE(LazyFS(backing), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
