"""`FrameReader`: a worker's events read many at a time, whole, with their descriptors."""

from __future__ import annotations

import array
import os
import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from pool._frames import READ_SIZE, Channel, FrameReader, frame_header

Ends = tuple[Connection, socket.socket, FrameReader]


@pytest.fixture
def ends() -> Iterator[Ends]:
    """A worker's end as a Connection, and the supervisor's socket and reader."""
    worker, supervisor = socket.socketpair()
    conn = Connection(worker.detach())
    reader = FrameReader(supervisor)
    try:
        yield conn, supervisor, reader
    finally:
        conn.close()
        reader.close()
        supervisor.close()


def _read_until(reader: FrameReader, count: int) -> list[bytes]:
    frames: list[bytes] = []
    while len(frames) < count:
        frames.extend(reader.read())
    return frames


def test_many_small_events_in_one_read(ends: Ends) -> None:
    conn, _, reader = ends
    sent = [bytes([i]) * i for i in range(50)]
    for data in sent:
        conn.send_bytes(data)
    assert reader.read() == sent  # all there already: one read takes them all
    assert reader.read() == []  # nothing more, and no blocking


def test_an_event_bigger_than_a_read_arrives_whole(
    ends: Ends,
) -> None:
    conn, _, reader = ends
    big = os.urandom(5 * READ_SIZE + 17)
    writer = threading.Thread(target=lambda: [conn.send_bytes(d) for d in (b"a", big, b"b")])
    writer.start()
    try:
        assert _read_until(reader, 3) == [b"a", big, b"b"]
    finally:
        writer.join(60)


def test_a_header_split_across_reads(ends: Ends) -> None:
    conn, _, reader = ends
    frame = frame_header(6) + b"abcdef"
    raw = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        for cut in (2, 5):  # inside the header, then inside the bytes
            raw.sendall(frame[:cut])
            assert reader.read() == []
            raw.sendall(frame[cut:])
            assert reader.read() == [b"abcdef"]
    finally:
        raw.close()


def test_the_long_header_of_send_bytes() -> None:
    # Connection.send_bytes writes -1 then an 8-byte length above 2 GiB; too
    # big to send here, so its header is checked on a small frame.
    assert frame_header(2**31) == b"\xff\xff\xff\xff" + (2**31).to_bytes(8, "big")
    worker, supervisor = socket.socketpair()
    reader = FrameReader(supervisor)
    try:
        worker.sendall(b"\xff\xff\xff\xff" + (3).to_bytes(8, "big") + b"xyz")
        assert reader.read() == [b"xyz"]
    finally:
        worker.close()
        supervisor.close()


def test_descriptors_come_in_order_with_their_frames(
    ends: Ends,
) -> None:
    conn, _, reader = ends
    raw = socket.socket(fileno=os.dup(conn.fileno()))
    files = [os.memfd_create(f"f{i}") for i in range(3)]
    try:
        for i, fd in enumerate(files):
            os.write(fd, str(i).encode())
            conn.send_bytes(b"plain")
            frame = frame_header(4) + b"with"
            raw.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        frames = _read_until(reader, 6)
        assert frames == [b"plain", b"with"] * 3
        for i in range(3):
            fd = reader.take_fd()
            try:
                assert os.pread(fd, 10, 0) == str(i).encode()
            finally:
                os.close(fd)
        with pytest.raises(OSError, match="did not pass"):
            reader.take_fd()
    finally:
        raw.close()
        for fd in files:
            os.close(fd)


def test_end_of_stream_after_the_last_events(ends: Ends) -> None:
    conn, _, reader = ends
    conn.send_bytes(b"last")
    conn.send_bytes(b"partial")
    # A worker that dies mid-event leaves half a frame: read_all keeps the whole ones.
    raw = socket.socket(fileno=os.dup(conn.fileno()))
    raw.sendall(frame_header(100) + b"cut short")
    raw.close()
    conn.close()
    assert reader.read_all() == [b"last", b"partial"]
    with pytest.raises(EOFError):
        reader.read()


def test_channel_speaks_connection_frames() -> None:
    """A worker's `Channel` and the caller's Connection read each other's frames, big ones too."""
    ours, theirs = socket.socketpair()
    channel, conn = Channel(ours.detach()), Connection(theirs.detach())
    big = os.urandom(3 * READ_SIZE)
    try:
        writer = threading.Thread(target=lambda: [conn.send_bytes(b"small"), conn.send_bytes(big)])
        writer.start()
        assert channel.recv_bytes() == b"small"
        assert channel.recv_bytes() == big
        writer.join()
        reader = threading.Thread(target=lambda: got.extend([conn.recv_bytes(), conn.recv_bytes()]))
        got: list[bytes] = []
        reader.start()
        channel.send_bytes(b"")
        channel.send_bytes(big)
        reader.join()
        assert got == [b"", big]
        conn.close()
        with pytest.raises(EOFError):
            channel.recv_bytes()
    finally:
        channel.close()
        conn.close()
    with pytest.raises(OSError):
        channel.fileno()
