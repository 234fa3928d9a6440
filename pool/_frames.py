"""A worker's events, read from its socket many at a time.

The worker writes each event as ``Connection.send_bytes`` frames it (a 4-byte
big-endian length, or -1 and an 8-byte length, then the bytes). Reading
them with ``Connection.recv_bytes`` costs two system calls per event (the
length, then the bytes) and blocks the supervisor until a big event has
arrived whole. `FrameReader` instead takes whatever the socket holds in one
``recvmsg``, which under load is several events, and keeps a partial event
for the next time the socket is readable, so one big result never holds
up the other workers.

Descriptors: a worker passes a result's shared memory (`pool._segments`)
attached to the frame that names it. ``recvmsg`` is the one way to read
them; a plain read would drop them. They queue here, in order, and the
supervisor takes one for each event that says it has one.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import deque

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Channel", "FrameReader", "frame_header", "read_exact", "send_with_fds"]

# One read takes at most this much; a frame bigger than that is read straight
# into a buffer of its own size.
READ_SIZE = 64 * 1024
# A read ends at the frame that carries descriptors (Linux never mixes two
# writers' descriptors in one read), and a worker attaches at most one.
_FDS_SPACE = socket.CMSG_SPACE(8 * array.array("i").itemsize)
# As plain ints: socket's are enum members, and each ``|`` or ``&`` of them
# runs Python code of the enum module, two of them on every read.
_RECV_FLAGS = int(socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_CTRUNC = int(socket.MSG_CTRUNC)
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
# Up to this size a frame goes out in one write, its header joined to it (as
# ``Connection.send_bytes`` does).
_JOIN_MAX = 16 * 1024


def frame_header(length: int) -> bytes:
    """The header ``Connection.send_bytes`` puts before ``length`` bytes."""
    if length > 0x7FFFFFFF:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(length)
    return _LENGTH.pack(length)


class Channel:
    """A worker's end of its Pipe, framed as ``Connection`` frames, without multiprocessing.

    A worker started by `pool._zygote` gets its socket as a bare descriptor:
    importing ``multiprocessing.connection`` would cost more than the rest
    of the worker's start. Reads and writes are exact, as ``Connection``'s:
    descriptors passed on the same socket stay for the one who asks for them.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("the channel is closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def send_bytes(self, data: bytes) -> None:
        header = frame_header(len(data))
        if len(data) <= _JOIN_MAX:
            self._write_all(header + data)
        else:
            self._write_all(header)
            self._write_all(data)

    def recv_bytes(self) -> bytes | bytearray:
        """The next frame; EOFError once the other end closed."""
        (length,) = _LENGTH.unpack(read_exact(self.fileno(), 4))
        if length == -1:
            (length,) = _LONG_LENGTH.unpack(read_exact(self.fileno(), 8))
        return read_exact(self.fileno(), length)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fileno(), view) :]


def read_exact(fd: int, length: int) -> bytes | bytearray:
    """Exactly ``length`` bytes from ``fd``, as few reads as it takes; EOFError at end of file."""
    first = os.read(fd, length)
    if len(first) == length:
        return first
    if not first:
        raise EOFError
    buffer = bytearray(length)
    buffer[: len(first)] = first
    got = len(first)
    view = memoryview(buffer)
    while got < length:
        count = os.readv(fd, [view[got:]])
        if not count:
            raise EOFError
        got += count
    return buffer


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """All of ``data``, the descriptors attached to its first bytes (a plain send would drop them)."""
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class FrameReader:
    """Whole frames and passed descriptors from one socket, read without blocking."""

    __slots__ = ("_big", "_big_got", "_buffer", "_fds", "_scratch", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()  # whole frames and the start of the next
        self._fds: deque[int] = deque()
        self._scratch = bytearray(READ_SIZE)
        # A frame bigger than one read is read straight into its own buffer.
        self._big: bytearray | None = None
        self._big_got = 0

    def read(self) -> list[bytes]:
        """The frames completed by what the socket holds now (maybe none).

        Raises EOFError once the other end closed, OSError if it broke.
        """
        self._fill()
        return self._cut()

    def read_all(self) -> list[bytes]:
        """Every whole frame the socket still holds (of a worker that just died)."""
        frames: list[bytes] = []
        try:
            while self._fill():
                frames += self._cut()
        except (EOFError, OSError):
            pass
        return frames + self._cut()

    def take_fd(self) -> int:
        """The next descriptor passed, in the order they came."""
        if not self._fds:
            raise OSError("an event named shared memory the worker did not pass")
        return self._fds.popleft()

    def close(self) -> None:
        """Close the descriptors received and never taken."""
        while self._fds:
            os.close(self._fds.popleft())

    def _fill(self) -> bool:
        """Read what the socket holds; False if it held nothing."""
        # Into a buffer kept for it: a fresh one per read, above malloc's
        # mmap threshold, costs a map, page faults and an unmap each time.
        into = self._scratch if self._big is None else memoryview(self._big)[self._big_got :]
        try:
            count, ancillary, flags, _ = self._sock.recvmsg_into([into], _FDS_SPACE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if flags & _CTRUNC:
            raise OSError("descriptors passed by the worker were cut off")
        if not count:
            raise EOFError
        if self._big is None:
            self._buffer += memoryview(into)[:count]
        else:
            self._big_got += count
        return True

    def _cut(self) -> list[bytes]:
        frames: list[Any] = []
        if self._big is not None:
            if self._big_got < len(self._big):
                return frames
            frames.append(self._big)  # a bytearray: pickle reads it as it is, no copy
            self._big = None
        buffer = self._buffer
        start, end = 0, len(buffer)
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            header = 4
            if length == -1:
                if end - start < 12:
                    break
                (length,) = _LONG_LENGTH.unpack_from(buffer, start + 4)
                header = 12
            if end - start < header + length:
                if length > READ_SIZE:
                    # The rest of the buffer is this frame's start: it moves to a
                    # buffer of the frame's size, which the next reads fill.
                    self._big = bytearray(length)
                    self._big_got = end - start - header
                    self._big[: self._big_got] = buffer[start + header : end]
                    start = end
                break
            frames.append(bytes(buffer[start + header : start + header + length]))
            start += header + length
        if start:
            del buffer[:start]
        return frames
