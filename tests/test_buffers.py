"""Big buffers travel out of band, through shared memory, and nothing is left behind."""

from __future__ import annotations

import os
import signal
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tasks import (
    add_one_in_place,
    big_bytes,
    count_segments,
    counted_segments,
    describe_buffers,
    die_holding,
    die_once_holding,
    identity,
    open_segments,
    read_fifo,
)

from pool import Pool, SerializationError, WorkerLost
from pool import _segments as segments
from pool._serialize import _pickler

_Pickler = _pickler()

pytestmark = pytest.mark.skipif(not segments.AVAILABLE, reason="needs memfd_create and descriptor passing")

MIB = 2**20


@pytest.fixture(autouse=True)
def no_segment_left() -> Iterator[None]:
    """After each test, and after its pool closed: no segment open in this process."""
    yield
    assert count_segments(os.getpid()) == 0


def _worker_segments(p: Pool) -> list[int]:
    return [count_segments(pid) for pid in (w.pid for w in p.stats().workers) if pid is not None]


# --- the format ---------------------------------------------------------------


def test_small_payloads_stay_in_the_pickle() -> None:
    data, segment = segments.dumps_out_of_band((b"x" * 1000, bytearray(10), [1, 2]), _Pickler)
    assert segment is None
    assert segments.loads_out_of_band(data, (), -1) == (b"x" * 1000, bytearray(10), [1, 2])


def test_big_buffers_leave_the_pickle_and_come_back_equal() -> None:
    blob = big_bytes(3 * MIB)
    value = {"header": "h", "blob": blob, "list": [1, bytearray(blob[: MIB + 5])]}
    data, segment = segments.dumps_out_of_band(value, _Pickler)
    assert segment is not None
    assert len(data) < 1000  # only references in the pickle
    assert [how for _, _, how in segment.layout] == [segments.BYTES, segments.BYTEARRAY]
    try:
        back = segments.loads_out_of_band(data, segment.layout, segment.fd)
    finally:
        segment.close()
    assert back == value
    assert type(back["blob"]) is bytes and type(back["list"][1]) is bytearray


def test_bytes_deep_in_an_object_stay_in_the_pickle_but_arrive() -> None:
    deep = [[[[big_bytes(MIB)]]]]
    data, segment = segments.dumps_out_of_band(deep, _Pickler)
    assert segment is None
    assert segments.loads_out_of_band(data, (), -1) == deep


def test_the_same_buffer_twice_is_stored_once_and_shared_again() -> None:
    blob = big_bytes(MIB)
    data, segment = segments.dumps_out_of_band((blob, blob), _Pickler)
    assert segment is not None
    try:
        assert len(segment.layout) == 1  # pickle's memo sees the second as the first
        first, second = segments.loads_out_of_band(data, segment.layout, segment.fd)
    finally:
        segment.close()
    assert first is second and first == blob


# --- through a pool -------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_big_arguments_and_results_round_trip(pool: Pool, kind: type) -> None:
    blob = kind(big_bytes(8 * MIB, seed=3))
    back = pool.submit(identity, blob).result(timeout=60)
    assert type(back) is kind and back == blob
    # The worker saw what was sent, and kept no segment open after the task.
    assert pool.submit(describe_buffers, blob).result(timeout=60) == (
        kind.__name__,
        len(blob),
        zlib.crc32(blob),
    )
    assert pool.submit(open_segments).result(timeout=60) == 0


def test_results_made_in_the_worker_arrive_whole(pool: Pool) -> None:
    sizes = [segments.OUT_OF_BAND_MIN - 1, segments.OUT_OF_BAND_MIN, 5 * MIB + 3]
    futures = [pool.submit(big_bytes, size, seed) for seed, size in enumerate(sizes)]
    assert [f.result(timeout=60) for f in futures] == [big_bytes(s, seed) for seed, s in enumerate(sizes)]
    assert count_segments(os.getpid()) == 0


def test_many_big_tasks_at_once_keep_their_own_buffers(pool: Pool) -> None:
    blobs = [big_bytes(MIB, seed) for seed in range(12)]
    futures = [pool.submit(identity, (i, blob)) for i, blob in enumerate(blobs)]
    assert [f.result(timeout=60) for f in futures] == list(enumerate(blobs))
    assert sum(_worker_segments(pool)) == 0


def test_numpy_arrays_arrive_writable_and_private(pool: Pool) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(2 * MIB, dtype=np.int64)
    back = pool.submit(add_one_in_place, array).result(timeout=60)
    assert back.flags.writeable
    assert (back == array + 1).all()
    assert (array == np.arange(2 * MIB)).all()  # the caller's array is not the worker's
    back += 1  # the caller may write to what it got
    assert int(back[0]) == 2
    mapped = list(pool.map(add_one_in_place, [array, array[::-1].copy()], chunksize=2))
    assert (mapped[0] == array + 1).all() and (mapped[1] == array[::-1] + 1).all()


def test_a_retried_task_gets_its_big_arguments_again(pool: Pool, tmp_path: Path) -> None:
    blob = big_bytes(4 * MIB)
    future = pool.options(retries=1).submit(die_once_holding, str(tmp_path / "marker"), blob)
    assert future.result(timeout=60) == len(blob)


def test_a_worker_that_dies_with_big_arguments_leaks_nothing(pool: Pool) -> None:
    blob = big_bytes(4 * MIB)
    with pytest.raises(WorkerLost):
        pool.submit(die_holding, blob).result(timeout=60)
    assert pool.submit(identity, 1).result(timeout=60) == 1
    assert count_segments(os.getpid()) == 0


def test_unpicklable_arguments_with_big_buffers_fail_in_the_caller(pool: Pool) -> None:
    with pytest.raises(SerializationError, match="argument 1"):
        pool.submit(identity, big_bytes(2 * MIB), threading.Lock())  # type: ignore[call-arg]
    assert count_segments(os.getpid()) == 0


def test_without_a_descriptor_left_big_buffers_travel_in_the_pickle() -> None:
    import resource

    blob = big_bytes(MIB)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
    try:
        data, segment = segments.dumps_out_of_band(blob, _Pickler)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert segment is None
    assert segments.loads_out_of_band(data, (), -1) == blob


# --- the picklers kept between calls ------------------------------------------------


class _PicklesWhilePickled:
    """Pickling it pickles something else first, with the same kept pickler."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __reduce__(self) -> tuple[object, ...]:
        nested, segment = segments.dumps_out_of_band(("nested", self.inner), _Pickler)
        assert segment is None
        return (_loads_nested, (nested,))


def _loads_nested(data: bytes) -> object:
    return segments.loads_out_of_band(data, (), -1)


def test_each_pickle_stands_alone() -> None:
    shared = ["the same list", {"a": 1}]
    first, _ = segments.dumps_out_of_band((shared, shared), _Pickler)
    second, _ = segments.dumps_out_of_band((shared, 2), _Pickler)  # no memo left from the first
    assert segments.loads_out_of_band(second, (), -1) == (shared, 2)
    a, b = segments.loads_out_of_band(first, (), -1)
    assert a == shared and a is b


def test_pickling_inside_pickling_and_after_a_failure() -> None:
    data, _ = segments.dumps_out_of_band([1, _PicklesWhilePickled({"x": [2, 3]}), 4], _Pickler)
    assert segments.loads_out_of_band(data, (), -1) == [1, ("nested", {"x": [2, 3]}), 4]
    with pytest.raises(TypeError):
        segments.dumps_out_of_band(("fine", threading.Lock()), _Pickler)
    data, _ = segments.dumps_out_of_band(("fine", 5), _Pickler)
    assert segments.loads_out_of_band(data, (), -1) == ("fine", 5)


def test_threads_pickle_at_once() -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def pickle_many(seed: int) -> None:
        try:
            start.wait(30)
            for i in range(2000):
                value = (seed, i, [seed] * (i % 7), {"k": str(i)})
                data, _ = segments.dumps_out_of_band(value, _Pickler)
                assert segments.loads_out_of_band(data, (), -1) == value
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=pickle_many, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_big_tasks_queued_by_the_hundred_hold_few_descriptors(pool: Pool, tmp_path: Path) -> None:
    gates = [tmp_path / f"gate{i}" for i in range(2)]
    for gate in gates:
        os.mkfifo(gate)
    blocked = [pool.submit(read_fifo, str(gate)) for gate in gates]  # both workers wait
    blobs = [big_bytes(segments.OUT_OF_BAND_MIN, seed) for seed in range(3 * segments.MAX_LIVE)]
    futures = [pool.submit(identity, blob) for blob in blobs]
    assert count_segments(os.getpid()) == segments.MAX_LIVE  # the rest went in the pickle
    for gate in gates:
        with open(gate, "w") as fifo:
            fifo.write("go\n")
    assert [f.result(timeout=60) for f in blocked] == ["go", "go"]
    assert [f.result(timeout=60) for f in futures] == blobs
    assert count_segments(os.getpid()) == 0


def test_a_worker_forked_while_big_tasks_wait_holds_none_of_their_memory(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Pool(1, mp_context="fork") as p:
        blocked = p.options(retries=0).submit(read_fifo, str(gate))
        waiting = [p.submit(describe_buffers, big_bytes(2 * MIB, seed)) for seed in range(6)]
        assert count_segments(os.getpid()) == 6
        with open(gate, "w"):  # opened once the worker has it open: it runs the first task
            (pid,) = [w.pid for w in p.stats().workers]
            os.kill(pid, signal.SIGKILL)  # its replacement is forked now, with 6 segments open here
        with pytest.raises(WorkerLost):
            blocked.result(timeout=60)
        assert [f.result(timeout=60)[1] for f in waiting] == [2 * MIB] * 6
        assert p.submit(open_segments).result(timeout=60) == 0
        assert p.submit(counted_segments).result(timeout=60) == 0  # not the parent's 6
    assert count_segments(os.getpid()) == 0
