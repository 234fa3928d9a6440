"""Large buffers out of band: pickle protocol 5 through anonymous shared memory.

A task's arguments or result that hold big buffers (a 64 MiB ``bytes``, a
numpy array) would otherwise be copied into the pickle, then squeezed
through the Pipe 64 KiB at a time, then copied out again on each side. Here
the pickle keeps only a reference to each big buffer; the buffers are
written once into a `Segment`, an anonymous in-memory file
(``memfd_create``), whose descriptor is passed over the worker's Unix socket
(``SCM_RIGHTS``) next to the message. The reader takes what it needs:

* a ``bytes`` (or any read-only buffer) is read with one ``pread`` into a
  new ``bytes`` object, a ``bytearray`` into a new ``bytearray``: one copy,
  by the kernel, and no pickle copy;
* another writable buffer (a numpy array) is mapped copy-on-write
  (``MAP_PRIVATE``): no copy at all; the reader's writes stay its own.

Who owns the memory: the kernel, by reference count. A segment lives while
some process holds its descriptor or a mapping of it, and never has a
name, so nothing can be left behind: not when a worker dies between writing
and sending, not when the caller is killed. The caller's side keeps a task's
argument segment until the task ends (a retry on another worker sends it
again); a worker closes what it received once it has loaded it.

Which buffers: what pickle protocol 5 hands out of band (`pickle.PickleBuffer`,
numpy arrays and other types that reduce to one), anywhere in the object,
and ``bytes`` and ``bytearray`` found by a short look at the object
(`_holds_big_bytes`): the object itself and the first items of the tuples,
lists and dicts near its top. Pickle never offers those two out of band,
and hooking every object pickled (``persistent_id``) made pickling small
items five times slower. Buffers under `OUT_OF_BAND_MIN` stay in the
pickle, where they cost less than a segment.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import pickle
import socket
import threading
import weakref
from collections.abc import Callable

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "AVAILABLE",
    "OUT_OF_BAND_MIN",
    "Segment",
    "dumps_out_of_band",
    "loads_out_of_band",
    "receive_segments",
    "send_segments",
]

OUT_OF_BAND_MIN = 256 * 1024

# Segments this process made and holds at most. Each is a descriptor until
# its task ends, and thousands of big tasks queued would otherwise use up
# the process's descriptors (1,024 by default) and fail unrelated opens;
# past this many, buffers travel in the pickle. One token per live segment:
# list appends and pops are atomic, so no lock (a Segment may close from a
# garbage collection in any thread, even one inside this module).
MAX_LIVE = 64
_NAME = "pool-buffers"  # as /proc shows a segment's descriptor: /memfd:pool-buffers
_live: list[None] = []
# Every Segment object with its descriptor, so a forked child can disown them.
_open: weakref.WeakSet[Segment] = weakref.WeakSet()

AVAILABLE = hasattr(os, "memfd_create") and hasattr(socket, "send_fds") and hasattr(mmap, "MAP_PRIVATE")

# How a buffer is stored in a segment, and so how it is read back.
BYTES = 0  # a bytes object, handed to pickle by persistent id: read into a new bytes
BYTEARRAY = 1  # a bytearray, the same way: read into a new bytearray
READ_ONLY = 2  # a read-only out-of-band buffer: read into a new bytes
WRITABLE = 3  # a writable one: mapped copy-on-write

# Where each buffer lies in a segment: (offset, length, how) per buffer.
Layout = tuple[tuple[int, int, int], ...]

# How far `_holds_big_bytes` looks: this deep into containers, this many
# items of each. Enough for ``submit(fn, data)``, ``return data`` and
# ``return header, data``, at a fraction of a microsecond for small objects.
_SCAN_DEPTH = 3
_SCAN_ITEMS = 16
_CONTAINERS = frozenset({tuple, list, dict})


class Segment:
    """One anonymous shared-memory file holding a payload's big buffers.

    Owns its descriptor: `close` (or garbage collection) gives it back.
    """

    __slots__ = ("__weakref__", "counted", "fd", "layout")

    def __init__(self, fd: int, layout: Layout, *, counted: bool = False) -> None:
        self.fd = fd
        self.layout = layout
        self.counted = counted  # made here: one of `MAX_LIVE`
        _open.add(self)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            if self.counted:
                _live.pop()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        total = sum(length for _, length, _ in self.layout)
        return f"<Segment fd={self.fd} buffers={len(self.layout)} bytes={total}>"


# --- writing ------------------------------------------------------------------


class _Collector:
    """The buffers a pickling leaves out of band, in the order it meets them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buffers: list[tuple[memoryview, int]] = []
        # Pickle asks for a persistent id before it looks in its memo: the
        # same bytes twice is stored once, and comes back as one object.
        self._ids: dict[int, int] = {}

    def callback(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        self.buffers.append((raw, READ_ONLY if raw.readonly else WRITABLE))
        return False

    def bytes_id(self, obj: object) -> int | None:
        kind = type(obj)
        if (kind is bytes or kind is bytearray) and len(obj) >= OUT_OF_BAND_MIN:  # type: ignore[arg-type]
            index = self._ids.get(id(obj))
            if index is None:
                self.buffers.append((memoryview(obj), BYTES if kind is bytes else BYTEARRAY))  # type: ignore[arg-type]
                index = self._ids[id(obj)] = len(self.buffers) - 1
            return index
        return None


def dumps_out_of_band(
    obj: object, pickler: Callable[..., pickle.Pickler], *, scan: bool = True
) -> tuple[bytes, Segment | None]:
    """Pickle ``obj`` with ``pickler``, its big buffers in a segment (None if it has none).

    ``scan`` looks for big ``bytes`` (see the module docstring); map chunks
    of many small items skip it.
    """
    if not AVAILABLE or len(_live) >= MAX_LIVE:
        return _in_band(obj, pickler), None
    if scan and _holds_big_bytes(obj, _SCAN_DEPTH):
        file = io.BytesIO()
        collector = _Collector()
        instance = _with_bytes_ids(pickler)(file, protocol=5, buffer_callback=collector.callback)
        instance.collector = collector  # type: ignore[attr-defined]
        instance.dump(obj)
        data = file.getvalue()
        buffers = collector.buffers
    else:
        reused = _take_pickler(pickler)
        file, instance, collector = reused
        instance.dump(obj)  # on an error the pickler is dropped, not reused
        data = file.getvalue()
        buffers = collector.buffers
        _give_back(pickler, reused)
    if not buffers:
        return data, None
    try:
        return data, _write(buffers)
    except OSError:
        # No memory or no descriptor left for a segment (thousands of big
        # tasks queued): the buffers travel in the pickle, as without one.
        return _in_band(obj, pickler), None


def _in_band(obj: object, pickler: Callable[..., pickle.Pickler]) -> bytes:
    file = io.BytesIO()
    pickler(file, protocol=5).dump(obj)
    return file.getvalue()


# A pickler per thread and class, kept between calls: making one (cloudpickle's
# is Python code) costs three times what pickling a small call then does.
# Taken out while in use, so a nested call (user code run while pickling)
# makes its own.
_Reused = tuple[io.BytesIO, pickle.Pickler, _Collector]
_local = threading.local()
# A pickle bigger than this leaves its pickler unkept: its file holds the memory.
_KEEP_BELOW = 1 << 20


def _take_pickler(pickler: Callable[..., pickle.Pickler]) -> _Reused:
    kept: dict[Any, _Reused] | None = getattr(_local, "picklers", None)
    if kept is None:
        kept = _local.picklers = {}
    reused = kept.pop(pickler, None)
    if reused is None:
        file = io.BytesIO()
        collector = _Collector()
        reused = (file, pickler(file, protocol=5, buffer_callback=collector.callback), collector)
    return reused


def _give_back(pickler: Callable[..., pickle.Pickler], reused: _Reused) -> None:
    file, instance, collector = reused
    if file.tell() > _KEEP_BELOW:
        return
    file.seek(0)
    file.truncate()
    instance.clear_memo()
    # cloudpickle shares module globals between the functions of one pickle.
    shared = getattr(instance, "globals_ref", None)
    if shared:
        shared.clear()
    if collector.buffers:
        collector.reset()
    _local.picklers[pickler] = reused


@functools.cache
def _with_bytes_ids(pickler: Callable[..., pickle.Pickler]) -> Callable[..., pickle.Pickler]:
    """``pickler`` that hands big bytes to its ``collector``: a class of its own,
    since pickle calls ``persistent_id`` for every object once it is defined."""

    class BytesIdPickler(pickler):  # type: ignore[misc,valid-type]
        collector: _Collector

        def persistent_id(self, obj: object) -> int | None:
            return self.collector.bytes_id(obj)

    return BytesIdPickler


def _holds_big_bytes(obj: object, depth: int) -> bool:
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return len(obj) >= OUT_OF_BAND_MIN  # type: ignore[arg-type]
    if kind is dict:
        items: Any = obj.values()  # type: ignore[attr-defined]
    elif kind is tuple or kind is list:
        items = obj
    else:
        return False
    for looked, item in enumerate(items, 1):
        kind = type(item)
        if kind is bytes or kind is bytearray:
            if len(item) >= OUT_OF_BAND_MIN:
                return True
        elif depth > 1 and kind in _CONTAINERS and _holds_big_bytes(item, depth - 1):
            return True
        if looked == _SCAN_ITEMS:
            return False
    return False


def _write(buffers: list[tuple[memoryview, int]]) -> Segment:
    fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
    try:
        layout = []
        offset = 0
        for view, how in buffers:
            data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            _write_all(fd, data, offset)
            layout.append((offset, data.nbytes, how))
            # Each buffer starts on a page: a mapping must start at one.
            offset += -(-data.nbytes // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
    except BaseException:
        os.close(fd)
        raise
    _live.append(None)
    return Segment(fd, tuple(layout), counted=True)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done:], offset + done)


# --- reading ------------------------------------------------------------------


def loads_out_of_band(data: bytes, layout: Layout, fd: int) -> Any:
    """Unpickle what `dumps_out_of_band` made, its buffers read from ``fd``.

    Does not close ``fd``; mappings made here outlive it.
    """
    by_id: list[Any] = []
    out_of_band: list[Any] = []
    for offset, length, how in layout:
        if how == WRITABLE:
            buffer: Any = mmap.mmap(
                fd, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
            )
        elif how == BYTEARRAY:
            buffer = bytearray(length)
            _read_into(fd, memoryview(buffer), offset)
        else:
            buffer = _read_all(fd, length, offset)
        by_id.append(buffer)
        if how >= READ_ONLY:
            out_of_band.append(buffer)
    return _Unpickler(io.BytesIO(data), out_of_band, by_id).load()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[Any], by_id: list[Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._by_id = by_id

    def persistent_load(self, pid: Any) -> Any:
        return self._by_id[pid]


def _read_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]  # a short read: a signal, or a segment cut short
    done = len(data)
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        if not part:
            raise EOFError(f"shared-memory segment ends at {offset + done}, expected {offset + length} bytes")
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < view.nbytes:
        count = os.preadv(fd, [view[done:]], offset + done)
        if not count:
            raise EOFError(
                f"shared-memory segment ends at {offset + done}, expected {offset + view.nbytes} bytes"
            )
        done += count


def close_inherited() -> None:
    """Close the segments this process got by ``fork`` from its parent.

    ``MFD_CLOEXEC`` closes them across an exec, not a fork: a worker forked
    (``mp_context="fork"``) while big tasks wait would hold their memory for
    its whole life.
    """
    # The parent's Segment objects came along: none of them is this
    # process's to close or count (their numbers may be reused here).
    for segment in list(_open):
        segment.fd = -1
        segment.counted = False
    _live.clear()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: memfd_create is Linux's anyway
        return
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith(f"/memfd:{_NAME}"):
                os.close(int(name))
        except OSError:  # the listing's own descriptor, closed by now
            pass


# --- passing descriptors ----------------------------------------------------------


def socket_of(conn: Any) -> socket.socket:
    """A socket object on a Connection's descriptor (its own duplicate)."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))


def send_segments(sock: socket.socket, segments: list[Segment]) -> None:
    """Pass the segments' descriptors, right after the message that names them."""
    socket.send_fds(sock, [bytes([len(segments)])], [s.fd for s in segments])


def receive_segments(sock: socket.socket, count: int) -> list[Segment]:
    """Take the descriptors `send_segments` passed (layouts come from the message)."""
    data, fds, _, _ = socket.recv_fds(sock, 1, count, socket.MSG_CMSG_CLOEXEC)
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError("the other end closed before passing its shared memory")
    if len(fds) != count or data[0] != count % 256:
        for fd in fds:
            os.close(fd)
        raise OSError(f"expected {count} shared-memory descriptors, received {len(fds)}")
    return [Segment(fd, ()) for fd in fds]
