"""Bad input to the public API: each gets a clear error, and the pool stays usable.

Property-based (hypothesis) where the space is large: wrong types and
out-of-range values for every parameter must be refused at the call, with a
TypeError or ValueError that names the parameter, before any process starts;
the valid values must be accepted and work (accepted iff valid). Values of
many types, sizes and nestings must round-trip. Parametrized where the cases
are a fixed list: exceptions, arguments and results with odd pickling.

Everything that runs in a worker is either from ``_tasks`` or defined inside a
function here, so cloudpickle sends it by value and a worker never imports this
module (nor pytest and hypothesis with it).
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, NoReturn

import psutil
import pytest
from _support import worker_pids
from _tasks import add, identity, init_store, make_bytes, square
from conftest import close, stray_processes, wait_gone
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pool import Pool, PoolView, RemoteError, SerializationError

# Only an alarm: a passing test never waits this long.
TIMEOUT = 60.0

QUICK = settings(max_examples=40, deadline=None, derandomize=True, database=None)
FEW = settings(max_examples=12, deadline=None, derandomize=True, database=None)


# --- helpers --------------------------------------------------------------------


def started(p: Pool) -> bool:
    """Has the pool started its supervisor or any worker? (private; for assertions only)"""
    return p._supervisor.alive or bool(worker_pids(p))


def open_fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # not Linux: nothing to compare
        return set()


def safe_describe(exc: BaseException | None) -> str:
    """``Type: message``, even for an exception whose __str__ raises."""
    if exc is None:
        return "no exception"
    try:
        text = str(exc)
    except BaseException:
        text = "<str() failed>"
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {text[:300]}"


@pytest.fixture(scope="module")
def live() -> Iterator[Pool]:
    """A 2-worker pool shared by the tests that only give it work that cannot hurt it."""
    p = Pool(2)
    # Start both workers now, before the first test's leak check looks.
    assert p.submit(square, 2).result(timeout=TIMEOUT) == 4
    workers = [psutil.Process(pid) for pid in worker_pids(p)]
    try:
        yield p
    finally:
        close(p)
        assert not wait_gone(workers), "the shared pool's workers outlived its shutdown"


@pytest.fixture(scope="module")
def idle() -> Iterator[Pool]:
    """A pool that is only ever given bad calls: it must never start a process."""
    p = Pool(2)
    try:
        yield p
        assert not started(p), "bad calls started the pool"
    finally:
        close(p)


@contextlib.contextmanager
def settled(p: Pool) -> Iterator[None]:
    """On failure, shut the pool down and join its supervisor before pytest reports.

    A supervisor that crashed may still be formatting its traceback in its own
    thread; pytest formatting the failure at the same time trips CPython 3.11's
    thread-unsafe ast recursion check (an INTERNALERROR that ends the run).
    """
    try:
        yield
    except BaseException:
        close(p)
        raise


@pytest.fixture
def solo() -> Iterator[Pool]:
    """A fresh 1-worker pool: its tasks run one at a time, in submission order."""
    p = Pool(1)
    try:
        yield p
    finally:
        close(p)


# --- verdicts: what a value of a parameter must do ------------------------------

OK = "accepted"
EITHER = "accepted, or refused with TypeError/ValueError naming it"
Verdict = Any  # OK, EITHER, TypeError or ValueError

# Past this many seconds a timeout is absurd but not wrong: refusing it (with a
# ValueError naming it) is as good as honouring it.
HUGE_SECONDS = 1e6


def count_verdict(value: object, minimum: int, *, optional: bool = False) -> Verdict:
    if value is None and optional:
        return OK
    if isinstance(value, bool) or not isinstance(value, int):
        return TypeError
    if value < minimum:
        return ValueError
    return OK


def chunksize_verdict(value: object) -> Verdict:
    verdict = count_verdict(value, 1, optional=True)
    if verdict is OK and value is not None and value > sys.maxsize:  # type: ignore[operator]
        return EITHER  # bigger than any input; must still be honoured or refused by name
    return verdict


def timeout_verdict(value: object, *, zero: bool) -> Verdict:
    if value is None:
        verdict: Verdict = OK
    elif isinstance(value, Decimal):
        verdict = EITHER  # a number, though not a numbers.Real
    elif isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        verdict = TypeError
    elif (isinstance(value, float) and math.isnan(value)) or value < 0 or (value == 0 and not zero):
        verdict = ValueError
    elif value > HUGE_SECONDS:  # also inf, and ints too big for a float
        verdict = EITHER
    else:
        verdict = OK
    return verdict


def names(exc: BaseException, parameter: str) -> bool:
    text = str(exc)
    if parameter == "mp_context":
        return "mp_context" in text or "start method" in text
    if parameter == "iterable":
        return "iterable" in text or "iteration" in text
    return parameter in text


REJECTED = object()


def attempt(call: Callable[[], Any], verdicts: dict[str, tuple[object, Verdict]]) -> Any:
    """Make the call; check it is accepted iff every value is valid.

    A refusal must be a TypeError or ValueError that names one of the invalid
    parameters, of the type that parameter calls for. Returns the call's
    result, or REJECTED.
    """
    shown = ", ".join(f"{name}={value!r:.80}" for name, (value, _) in verdicts.items())
    must_refuse = {name for name, (_, v) in verdicts.items() if v in (TypeError, ValueError)}
    suspects = {name for name, (_, v) in verdicts.items() if v is not OK}
    try:
        result = call()
    except Exception as exc:
        named = [name for name in suspects if names(exc, name)]
        if not isinstance(exc, (TypeError, ValueError)) or not named:
            pytest.fail(
                f"({shown}) raised {safe_describe(exc)}; expected "
                + (
                    f"a TypeError or ValueError naming one of {sorted(suspects)}"
                    if suspects
                    else "the call to be accepted"
                )
            )
        fitting = [
            name for name in named if verdicts[name][1] in (OK, EITHER) or isinstance(exc, verdicts[name][1])
        ]
        assert fitting, f"({shown}) raised {safe_describe(exc)}, of the wrong type for {named}"
        return REJECTED
    assert not must_refuse, f"({shown}) was accepted, though {sorted(must_refuse)} is invalid"
    return result


# --- values ---------------------------------------------------------------------


class Opaque:
    """An object of no particular kind."""


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),  # NaN and the infinities too
    st.fractions(),
    st.decimals(),
    st.complex_numbers(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
ODD = st.sampled_from(
    [Opaque(), Ellipsis, NotImplemented, object, int, len, range(3), bytearray(b"x"), b"", "", (), [], {}]
)
ANYTHING = st.one_of(
    SCALARS,
    ODD,
    st.lists(SCALARS, max_size=3),
    st.tuples(SCALARS),
    st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
)
# Numbers a float or a machine word holds; bigger ones have tests of their own
# (test_numbers_too_big_for_a_machine_word), so that the properties here stay
# about everything else.
WORD = st.integers(min_value=-(2**63), max_value=2**63 - 1)
NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    WORD,
    st.floats(),
    st.fractions(),
)

# Values that pickle and compare equal to themselves after the trip.
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.builds(lambda n: 7**n, st.integers(0, 30_000)),  # ints of many digits
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.fractions(),
    st.decimals(allow_nan=False),
    st.text(),
    st.binary(),
    st.frozensets(st.integers() | st.text(max_size=4), max_size=4),
)
PICKLABLE = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=4),
    ),
    max_leaves=25,
)

CALLABLES = [square, identity, len, abs, str, int, repr, functools.partial(add, 1), "text".upper]


# --- Pool(...) -------------------------------------------------------------------

START_METHODS = multiprocessing.get_all_start_methods()


def pool_verdicts(kwargs: dict[str, Any]) -> dict[str, tuple[object, Verdict]]:
    verdicts: dict[str, tuple[object, Verdict]] = {}
    for name, value in kwargs.items():
        if name == "max_workers":
            verdict = count_verdict(value, 1, optional=True)
        elif name == "mp_context":
            if value is None or isinstance(value, multiprocessing.context.BaseContext):
                verdict = OK
            elif isinstance(value, str):
                verdict = OK if value in START_METHODS else ValueError
            else:
                verdict = TypeError
        elif name == "initializer":
            verdict = OK if value is None or callable(value) else TypeError
        elif name == "initargs":
            initializer = kwargs.get("initializer")
            if initializer is None or not callable(initializer):
                verdict = EITHER  # unused, as ProcessPoolExecutor leaves it
            elif isinstance(value, tuple):
                verdict = OK
            elif isinstance(value, (list, str, bytes, bytearray, range, dict)):
                verdict = EITHER  # ProcessPoolExecutor unpacks any iterable
            else:
                verdict = TypeError
        elif name == "max_tasks_per_child":
            verdict = count_verdict(value, 1, optional=True)
        elif name == "task_timeout":
            verdict = timeout_verdict(value, zero=False)
        else:
            assert name == "retries"
            verdict = count_verdict(value, 0)
        verdicts[name] = (value, verdict)
    return verdicts


POOL_ARGUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "max_workers": st.one_of(st.none(), WORD, ANYTHING),
        "mp_context": st.one_of(
            st.sampled_from([None, *START_METHODS, "", "threads", "Fork", " spawn"]),
            st.sampled_from(START_METHODS).map(multiprocessing.get_context),
            ANYTHING,
        ),
        "initializer": st.one_of(st.none(), st.just(init_store), st.sampled_from(CALLABLES), ANYTHING),
        "initargs": st.one_of(st.tuples(SCALARS), st.just(()), ANYTHING),
        "max_tasks_per_child": st.one_of(st.none(), WORD, ANYTHING),
        "task_timeout": st.one_of(st.none(), NUMBERS, ANYTHING),
        "retries": st.one_of(WORD, ANYTHING),
    },
)


@QUICK
@given(kwargs=POOL_ARGUMENTS)
@example(kwargs={"max_workers": 0})
@example(kwargs={"max_workers": True})
@example(kwargs={"mp_context": "no-such-method"})
@example(kwargs={"initializer": 42})
@example(kwargs={"initializer": init_store, "initargs": 7})
@example(kwargs={"max_tasks_per_child": 0})
@example(kwargs={"task_timeout": math.nan})
@example(kwargs={"retries": -1})
@example(kwargs={"max_workers": 10**30, "retries": 10**30, "max_tasks_per_child": 10**30})
def test_pool_accepts_exactly_the_valid_arguments(kwargs: dict[str, Any]) -> None:
    verdicts = pool_verdicts(kwargs)
    fds, threads = open_fds(), threading.active_count()
    children = {p.pid for p in stray_processes()}
    p = attempt(lambda: Pool(**kwargs), verdicts)
    if p is not REJECTED:
        try:
            assert isinstance(p, Pool)
            assert not started(p), "constructing a pool started a process"
        finally:
            p.shutdown()
    # Refused or shut down, it leaves no process, thread or file descriptor.
    assert {p.pid for p in stray_processes()} <= children
    assert threading.active_count() == threads
    assert open_fds() == fds


def test_unpicklable_initializer_and_initargs_fail_at_the_constructor() -> None:
    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __call__(self) -> None:
            pass

    fds = open_fds()
    with pytest.raises(SerializationError, match=r"Holder.*lock"):
        Pool(1, initializer=Holder())
    with pytest.raises(SerializationError, match=r"argument 1 \(.*lock.*init_store"):
        Pool(1, initializer=init_store, initargs=(1, threading.Lock()))
    assert open_fds() == fds


# --- submit ----------------------------------------------------------------------


@QUICK
@given(fn=ANYTHING.filter(lambda v: not callable(v)), args=st.lists(SCALARS, max_size=3))
@example(fn=None, args=[])
@example(fn="square", args=[3])
def test_submit_refuses_a_non_callable_naming_fn(idle: Pool, fn: object, args: list[Any]) -> None:
    with pytest.raises(TypeError, match=r"\bfn\b.*callable"):
        idle.submit(fn, *args)  # type: ignore[arg-type]
    assert not started(idle)


def local_outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except Exception as exc:
        return "error", type(exc)


@QUICK
@given(fn=st.sampled_from(CALLABLES), args=st.lists(PICKLABLE, max_size=2).map(tuple))
def test_submit_runs_any_picklable_callable_on_any_picklable_value(
    live: Pool, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    kind, expected = local_outcome(fn, args)
    future = live.submit(fn, *args)
    error = future.exception(timeout=TIMEOUT)
    if kind == "value":
        assert error is None, safe_describe(error)
        result = future.result()
        # repr too: a complex square may hold a NaN, equal to nothing.
        assert result == expected or repr(result) == repr(expected)
    else:
        assert type(error) is expected, safe_describe(error)


@FEW
@given(value=PICKLABLE)
def test_values_of_many_types_and_nestings_round_trip(live: Pool, value: Any) -> None:
    back = live.submit(identity, value).result(timeout=TIMEOUT)
    assert back == value
    assert type(back) is type(value)
    assert list(live.map(identity, [value, value])) == [value, value]


@QUICK
@given(
    args=st.lists(PICKLABLE, max_size=4),
    kwargs=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), PICKLABLE, max_size=3),
    depth=st.integers(0, 4),
    data=st.data(),
)
def test_an_unpicklable_argument_is_named_at_submit(
    idle: Pool, args: list[Any], kwargs: dict[str, Any], depth: int, data: st.DataObject
) -> None:
    """A lock buried anywhere in the arguments: SerializationError naming the argument."""
    slots = [*range(len(args)), *kwargs]
    slot = data.draw(st.sampled_from(slots)) if slots else None
    poison: Any = threading.Lock()
    for level in range(depth):
        poison = [poison] if level % 2 else {"deep": poison}
    if slot is None:
        args.append(poison)
        slot = 0
    elif isinstance(slot, int):
        args[slot] = poison
    else:
        kwargs[slot] = poison
    where = f"argument {slot} (" if isinstance(slot, int) else f"keyword argument {slot!r} ("
    with pytest.raises(SerializationError) as info:
        idle.submit(identity, *args, **kwargs)
    message = str(info.value)
    assert where in message, message
    assert "lock" in message, message
    assert not started(idle)


# --- map, imap, imap_unordered, starmap ---------------------------------------------

METHODS = ["map", "imap", "imap_unordered", "starmap"]


@QUICK
@given(
    method=st.sampled_from(METHODS),
    chunksize=st.one_of(st.none(), st.integers(-3, 40), WORD, ANYTHING),
    timeout=st.one_of(st.none(), NUMBERS, ANYTHING),
    n=st.integers(0, 30),
    lazy=st.booleans(),
)
@example(method="map", chunksize=0, timeout=None, n=3, lazy=False)
@example(method="imap", chunksize=True, timeout=None, n=3, lazy=True)
@example(method="imap_unordered", chunksize=-1, timeout=None, n=3, lazy=True)
@example(method="starmap", chunksize=2.0, timeout=None, n=3, lazy=True)
@example(method="map", chunksize=None, timeout=-1, n=3, lazy=False)
@example(method="map", chunksize=None, timeout=math.nan, n=3, lazy=False)
@example(method="map", chunksize=None, timeout=math.inf, n=3, lazy=False)
@example(method="imap", chunksize=sys.maxsize, timeout=None, n=3, lazy=True)
def test_map_family_accepts_exactly_the_valid_arguments(
    live: Pool, idle: Pool, method: str, chunksize: Any, timeout: Any, n: int, lazy: bool
) -> None:
    verdicts = {"chunksize": (chunksize, chunksize_verdict(chunksize))}
    kwargs: dict[str, Any] = {"chunksize": chunksize}
    if method == "map":
        verdicts["timeout"] = (timeout, timeout_verdict(timeout, zero=True))
        kwargs["timeout"] = timeout
    if method == "starmap":
        fn: Callable[..., Any] = add
        items: list[Any] = [(i, 2 * i) for i in range(n)]
        expected = [3 * i for i in range(n)]
    else:
        fn, items, expected = square, list(range(n)), [i * i for i in range(n)]
    invalid = any(v in (TypeError, ValueError) for _, v in verdicts.values())
    target = idle if invalid else live
    source = iter(items) if lazy else items
    results = attempt(lambda: getattr(target, method)(fn, source, **kwargs), verdicts)
    assert not started(idle)
    if results is REJECTED:
        return
    if method == "map" and timeout is not None and timeout < 60:
        results.close()  # a short timeout may rightly expire on a busy machine
        return
    got = list(results)
    assert (sorted(got) if method == "imap_unordered" else got) == expected


@QUICK
@given(
    method=st.sampled_from(METHODS),
    bad=ANYTHING.filter(lambda v: not hasattr(v, "__iter__") and not hasattr(v, "__getitem__")),
    second=st.booleans(),
)
def test_map_family_refuses_a_non_iterable(idle: Pool, method: str, bad: object, second: bool) -> None:
    if method == "map" and second:
        call = functools.partial(idle.map, add, [1, 2], bad)  # the second of two iterables
    else:
        call = functools.partial(getattr(idle, method), square, bad)
    with pytest.raises(TypeError) as info:
        call()
    assert names(info.value, "iterable"), str(info.value)
    assert not started(idle)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fn", [None, 42, "square", [square]], ids=repr)
def test_map_family_refuses_a_non_callable_naming_fn(idle: Pool, method: str, fn: object) -> None:
    with pytest.raises(TypeError, match=r"\bfn\b.*callable"):
        getattr(idle, method)(fn, [(1, 2)])
    assert not started(idle)


def test_map_without_an_iterable_is_refused(idle: Pool) -> None:
    with pytest.raises(TypeError, match="iterable"):
        idle.map(square)
    assert not started(idle)


@QUICK
@given(
    method=st.sampled_from(METHODS),
    n=st.integers(1, 25),
    kind=st.sampled_from(["unpicklable", "input raises"]),
    chunksize=st.one_of(st.none(), st.integers(1, 4)),
    lazy=st.booleans(),
    data=st.data(),
)
def test_a_bad_item_ends_the_map_at_its_place(
    live: Pool, method: str, n: int, kind: str, chunksize: int | None, lazy: bool, data: st.DataObject
) -> None:
    """Every result before the bad item comes out, then its error: at the call if it is the first."""
    k = data.draw(st.integers(0, n - 1), label="bad position")
    star = method == "starmap"
    fn: Callable[..., Any] = add if star else square
    expected = [add(i, i) if star else square(i) for i in range(k)]

    def items() -> Iterator[Any]:
        for i in range(n):
            if i == k and kind == "input raises":
                raise LookupError(f"the input broke at {k}")
            value: Any = threading.Lock() if i == k else i
            yield (value, i) if star else value

    source: Any = items() if lazy or kind == "input raises" else list(items())
    if kind == "unpicklable":
        error: type[Exception] = SerializationError
        pattern = rf"item {k} \(.*lock"
    else:
        error, pattern = LookupError, rf"the input broke at {k}\b"
    got: list[Any] = []
    with pytest.raises(error, match=pattern):
        results = getattr(live, method)(fn, source, chunksize=chunksize)
        assert k > 0, "the first item is bad: the call itself must raise"
        got.extend(results)
    assert (sorted(got) if method == "imap_unordered" else got) == expected
    assert live.submit(square, 3).result(timeout=TIMEOUT) == 9


# --- options ----------------------------------------------------------------------


@QUICK
@given(
    timeout=st.one_of(st.none(), NUMBERS, ANYTHING),
    retries=st.one_of(WORD, ANYTHING),
    given_=st.sampled_from(["timeout", "retries", "both"]),
    chained=st.booleans(),
)
@example(timeout=0, retries=0, given_="timeout", chained=False)
@example(timeout=math.nan, retries=0, given_="timeout", chained=True)
@example(timeout=math.inf, retries=0, given_="timeout", chained=False)
@example(timeout=None, retries=-1, given_="retries", chained=False)
@example(timeout=None, retries=2.0, given_="retries", chained=True)
def test_options_accepts_exactly_the_valid_values(
    idle: Pool, timeout: Any, retries: Any, given_: str, chained: bool
) -> None:
    kwargs: dict[str, Any] = {}
    verdicts: dict[str, tuple[object, Verdict]] = {}
    if given_ in ("timeout", "both"):
        kwargs["timeout"] = timeout
        verdicts["timeout"] = (timeout, timeout_verdict(timeout, zero=False))
    if given_ in ("retries", "both"):
        kwargs["retries"] = retries
        verdicts["retries"] = (retries, count_verdict(retries, 0))
    base = idle.options(retries=1) if chained else idle
    view = attempt(lambda: base.options(**kwargs), verdicts)
    if view is not REJECTED:
        assert isinstance(view, PoolView)
    assert not started(idle)


TOO_BIG = {
    "map(chunksize=2**64)": ("map", {"chunksize": 2**64}),
    "imap(chunksize=sys.maxsize + 1)": ("imap", {"chunksize": sys.maxsize + 1}),
    "imap_unordered(chunksize=2**100)": ("imap_unordered", {"chunksize": 2**100}),
    "starmap(chunksize=2**64)": ("starmap", {"chunksize": 2**64}),
    "map(timeout=10**400)": ("map", {"timeout": 10**400}),
}


@pytest.mark.parametrize("case", list(TOO_BIG))
def test_numbers_too_big_for_a_machine_word(live: Pool, case: str) -> None:
    """Valid but past a float or a machine word: honoured, or refused naming the parameter."""
    method, kwargs = TOO_BIG[case]
    verdicts = {name: (value, EITHER) for name, value in kwargs.items()}
    fn: Callable[..., Any] = add if method == "starmap" else square
    items = [(i, i) for i in range(5)] if method == "starmap" else list(range(5))
    results = attempt(lambda: getattr(live, method)(fn, iter(items), **kwargs), verdicts)
    if results is not REJECTED:
        got = list(results)
        expected = [2 * i if method == "starmap" else i * i for i in range(5)]
        assert (sorted(got) if method == "imap_unordered" else got) == expected


@pytest.mark.parametrize("where", ["Pool(task_timeout=...)", "options(timeout=...)"])
def test_a_timeout_too_big_for_a_float_is_refused_by_name(where: str) -> None:
    verdicts = {"timeout": (10**400, EITHER)}
    with Pool(1) as p:
        if where.startswith("Pool"):
            verdicts = {"task_timeout": (10**400, EITHER)}
            made = attempt(lambda: Pool(1, task_timeout=10**400), verdicts)
        else:
            made = attempt(lambda: p.options(timeout=10**400), verdicts)
        if made is not REJECTED:
            if isinstance(made, Pool):
                made.shutdown()
            pytest.skip("accepted: test_a_huge_task_timeout_is_refused_or_honoured checks it works")


# Seconds that are valid but absurd: a month (more milliseconds than poll()
# takes), more than a time_t holds, and forever.
HUGE_TIMEOUTS = [31 * 24 * 3600, 1e10, math.inf]


@pytest.mark.parametrize("seconds", HUGE_TIMEOUTS, ids=["a month", "1e10 s", "inf"])
@pytest.mark.parametrize("where", ["Pool(task_timeout=...)", "options(timeout=...)"])
def test_a_huge_task_timeout_is_refused_or_honoured(where: str, seconds: float) -> None:
    """Refused at the call by name, or a task under it runs; never a broken pool."""
    try:
        if where.startswith("Pool"):
            p = Pool(1, task_timeout=seconds)
            api: Pool | PoolView = p
        else:
            p = Pool(1)
            api = p.options(timeout=seconds)
    except ValueError as exc:
        assert "timeout" in str(exc), str(exc)
        return
    try:
        future = api.submit(square, 7)
        assert future.exception(timeout=TIMEOUT) is None, safe_describe(future.exception())
        assert future.result() == 49
        assert p.submit(square, 8).result(timeout=TIMEOUT) == 64
    finally:
        close(p)


def test_a_pool_that_refused_everything_still_works() -> None:
    lock = threading.Lock()
    with Pool(1) as p:
        bad_calls: list[Callable[[], object]] = [
            lambda: p.submit(42),  # type: ignore[arg-type]
            lambda: p.submit(identity, lock),
            lambda: p.submit(identity, x=lock),
            lambda: p.map(square),
            lambda: p.map(square, 5),
            lambda: p.map(square, [1], chunksize=0),
            lambda: p.map(square, [1], timeout=-1),
            lambda: p.map(identity, [lock]),
            lambda: p.imap(square, None),  # type: ignore[arg-type]
            lambda: p.imap_unordered(square, [1], chunksize="2"),  # type: ignore[arg-type]
            lambda: p.starmap(add, 3),  # type: ignore[arg-type]
            lambda: p.options(timeout=0),
            lambda: p.options(retries=-1),
        ]
        for call in bad_calls:
            with pytest.raises((TypeError, ValueError, SerializationError)):
                call()
        assert not started(p)
        assert p.submit(square, 5).result(timeout=TIMEOUT) == 25
        assert list(p.imap(square, range(4))) == [0, 1, 4, 9]
        assert list(p.options(retries=1).map(add, [1, 2], [3, 4])) == [4, 6]


# --- huge arguments and results -----------------------------------------------------

BIG = 64 * 1024 * 1024


@pytest.mark.parametrize("route", ["submit", "map", "imap_unordered", "result only"])
def test_64_mib_round_trips_and_the_pool_carries_on(live: Pool, route: str) -> None:
    blob = bytes(range(256)) * (BIG // 256)
    if route == "submit":
        assert live.submit(identity, blob).result(timeout=TIMEOUT) == blob
    elif route == "map":
        assert list(live.map(identity, [blob, b"small", blob])) == [blob, b"small", blob]
    elif route == "imap_unordered":
        got = list(live.imap_unordered(identity, iter([b"small", blob])))
        assert sorted(got, key=len) == [b"small", blob]
    else:
        made = live.submit(make_bytes, BIG).result(timeout=TIMEOUT)
        assert len(made) == BIG and made == b"r" * BIG
    assert live.submit(square, 9).result(timeout=TIMEOUT) == 81


@FEW
@given(size=st.integers(0, 4 * 1024 * 1024), route=st.sampled_from(["submit", "map"]))
@example(size=64 * 1024 - 1, route="submit")
@example(size=64 * 1024, route="map")
@example(size=256 * 1024 + 1, route="submit")
def test_payloads_of_any_size_round_trip(live: Pool, size: int, route: str) -> None:
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    if route == "submit":
        assert live.submit(identity, data).result(timeout=TIMEOUT) == data
    else:
        assert list(live.map(identity, [data, data[::-1]], chunksize=2)) == [data, data[::-1]]


def test_many_arguments_and_a_big_keyword_mapping(live: Pool) -> None:
    numbers = list(range(100_000))
    assert live.submit(lambda *xs: sum(xs), *numbers).result(timeout=TIMEOUT) == sum(numbers)
    keywords = {f"k{i}": i for i in range(20_000)}
    assert live.submit(lambda **kw: len(kw), **keywords).result(timeout=TIMEOUT) == 20_000


# --- exceptions with odd pickling, raised in a worker ---------------------------------


@dataclass
class Expect:
    """What the caller must see: the exception itself, or a RemoteError describing it."""

    cls: type[BaseException]
    message: str | None  # None: any non-empty message will do
    attrs: dict[str, Any] = field(default_factory=dict)


Case = tuple[Callable[[], BaseException], Expect]


def odd_reductions() -> dict[str, Case]:
    """Exceptions whose ``__reduce__`` misbehaves, or whose rebuild does.

    Defined in a function, as the others below, so that cloudpickle sends the
    classes and functions by value.
    """

    def in_caller() -> bool:
        return multiprocessing.parent_process() is None

    class ReduceRaises(Exception):
        def __reduce__(self) -> Any:
            raise RuntimeError("no reduce for you")

    class ReduceReturnsNone(Exception):
        def __reduce__(self) -> Any:
            return None

    class ReduceReturnsInt(Exception):
        def __reduce__(self) -> Any:
            return 42

    class ReduceReturnsName(Exception):
        def __reduce__(self) -> Any:
            return "no_such_global_anywhere"

    class ReduceShortTuple(Exception):
        def __reduce__(self) -> Any:
            return (ValueError,)

    class ReduceNotCallable(Exception):
        def __reduce__(self) -> Any:
            return (42, self.args)

    class ReduceArgsNotTuple(Exception):
        def __reduce__(self) -> Any:
            return (type(self), 5)

    def refuse(*args: object) -> NoReturn:
        raise RuntimeError("refused to rebuild")

    class RebuildRaises(Exception):
        def __reduce__(self) -> Any:
            return (refuse, self.args)

    def refuse_in_caller(*args: object) -> BaseException:
        if in_caller():
            raise LookupError("refused to rebuild in the caller")
        return RuntimeError(*args)

    class RebuildRaisesInCaller(Exception):
        def __reduce__(self) -> Any:
            return (refuse_in_caller, self.args)

    def exit_in_caller(*args: object) -> BaseException:
        if in_caller():
            raise SystemExit("rebuilt in the caller")
        return RuntimeError(*args)

    class RebuildExitsInCaller(Exception):
        def __reduce__(self) -> Any:
            return (exit_in_caller, self.args)

    class RebuildsAsNonException(Exception):
        def __reduce__(self) -> Any:
            return (str, self.args)

    return {
        "__reduce__ raises": (lambda: ReduceRaises("r"), Expect(ReduceRaises, "r")),
        "__reduce__ returns None": (lambda: ReduceReturnsNone("r"), Expect(ReduceReturnsNone, "r")),
        "__reduce__ returns an int": (lambda: ReduceReturnsInt("r"), Expect(ReduceReturnsInt, "r")),
        "__reduce__ returns a name": (lambda: ReduceReturnsName("r"), Expect(ReduceReturnsName, "r")),
        "__reduce__ returns a 1-tuple": (lambda: ReduceShortTuple("r"), Expect(ReduceShortTuple, "r")),
        "__reduce__ returns a non-callable": (
            lambda: ReduceNotCallable("r"),
            Expect(ReduceNotCallable, "r"),
        ),
        "__reduce__ args not a tuple": (lambda: ReduceArgsNotTuple("r"), Expect(ReduceArgsNotTuple, "r")),
        "rebuild raises": (lambda: RebuildRaises("r"), Expect(RebuildRaises, "r")),
        "rebuild raises in the caller": (
            lambda: RebuildRaisesInCaller("r"),
            Expect(RebuildRaisesInCaller, "r"),
        ),
        "rebuild raises SystemExit in the caller": (
            lambda: RebuildExitsInCaller("r"),
            Expect(RebuildExitsInCaller, "r"),
        ),
        "rebuilds as a non-exception": (
            lambda: RebuildsAsNonException("r"),
            Expect(RebuildsAsNonException, "r"),
        ),
    }


def odd_classes() -> dict[str, Case]:
    """Exceptions with broken __str__/__repr__, unpicklable parts, or no Exception base."""

    class StrRaises(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    class ReprRaises(Exception):
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    class Interrupted(BaseException):
        pass

    class StrRaisesBaseException(Exception):
        def __str__(self) -> str:
            raise Interrupted("str() interrupted")

    class Mismatch(Exception):
        def __init__(self, code: int, reason: str) -> None:
            super().__init__(f"code {code}: {reason}")
            self.code = code
            self.reason = reason

    class HoldsLock(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()

    class ClassHoldsLock(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            type(self).guard = threading.Lock()  # the class itself no longer pickles

    class Stop(BaseException):
        def __init__(self, step: int) -> None:
            super().__init__(f"stopped at step {step}")
            self.step = step

    return {
        "__str__ raises": (lambda: StrRaises("s"), Expect(StrRaises, None)),
        "__str__ raises a BaseException": (
            lambda: StrRaisesBaseException("s"),
            Expect(StrRaisesBaseException, None),
        ),
        "__repr__ raises": (lambda: ReprRaises("p"), Expect(ReprRaises, "p")),
        "__init__ does not match args": (
            lambda: Mismatch(7, "no luck"),
            Expect(Mismatch, "code 7: no luck", {"code": 7, "reason": "no luck"}),
        ),
        "unpicklable attribute": (lambda: HoldsLock("locked"), Expect(HoldsLock, "locked")),
        "unpicklable class attribute": (lambda: ClassHoldsLock("guarded"), Expect(ClassHoldsLock, "guarded")),
        "local BaseException subclass": (lambda: Stop(3), Expect(Stop, "stopped at step 3", {"step": 3})),
        "KeyboardInterrupt": (lambda: KeyboardInterrupt("ki"), Expect(KeyboardInterrupt, "ki")),
        "SystemExit": (lambda: SystemExit(7), Expect(SystemExit, "7", {"code": 7})),
        "GeneratorExit": (lambda: GeneratorExit("g"), Expect(GeneratorExit, "g")),
    }


def odd_chains() -> dict[str, Case]:
    """Exceptions whose chain loops, runs long, or carries odd notes or a huge message."""

    class NotesTuple(Exception):
        pass

    def context_cycle() -> BaseException:
        a, b = ValueError("a"), KeyError("b")
        a.__context__, b.__context__ = b, a
        return a

    def cause_cycle() -> BaseException:
        a, b = ValueError("a"), KeyError("b")
        a.__cause__, b.__cause__ = b, a
        return a

    def own_context() -> BaseException:
        a = ValueError("a")
        a.__context__ = a
        return a

    def long_chain() -> BaseException:
        exc = ValueError("0")
        for i in range(1, 5000):
            outer = ValueError(str(i))
            outer.__context__ = exc
            exc = outer
        return exc

    def notes_tuple() -> BaseException:
        exc = NotesTuple("n")
        exc.__notes__ = ("a note kept in a tuple",)  # type: ignore[attr-defined]
        return exc

    def unpicklable_args() -> BaseException:
        return ValueError("with a lock in its args", threading.Lock())

    return {
        "unpicklable args": (unpicklable_args, Expect(ValueError, None)),
        "__context__ cycle": (context_cycle, Expect(ValueError, "a")),
        "__cause__ cycle": (cause_cycle, Expect(ValueError, "a")),
        "own __context__": (own_context, Expect(ValueError, "a")),
        "5000-long __context__ chain": (long_chain, Expect(ValueError, "4999")),
        "__notes__ is a tuple": (notes_tuple, Expect(NotesTuple, "n")),
        "8 MiB message": (lambda: ValueError("m" * (8 << 20)), Expect(ValueError, "m" * (8 << 20))),
    }


def odd_exceptions() -> dict[str, tuple[Callable[[object], NoReturn], Expect]]:
    """Cases by name: a function that raises in the worker, and what the caller must see."""

    def raiser(make: Callable[[], BaseException]) -> Callable[[object], NoReturn]:
        def raise_it(_: object = None) -> NoReturn:
            raise make()

        return raise_it

    cases = {**odd_reductions(), **odd_classes(), **odd_chains()}
    return {name: (raiser(make), expect) for name, (make, expect) in cases.items()}


ODD_EXCEPTIONS = list(odd_exceptions())


def check_error(error: BaseException | None, expect: Expect) -> None:
    """The exception itself with its attributes, or a RemoteError filled in sensibly."""
    assert error is not None, "the task succeeded"
    if isinstance(error, RemoteError):
        # A class cloudpickle sent by value keeps its name but not its qualname.
        module, cls = expect.cls.__module__, expect.cls
        expected_names = {f"{module}.{cls.__qualname__}", f"{module}.{cls.__name__}"}
        assert error.type_name in expected_names, error.type_name
        assert isinstance(error.message, str) and error.message, repr(error.message)
        if expect.message is not None:
            assert error.message == expect.message, error.message[:200]
        assert "Traceback (most recent call last)" in error.traceback, error.traceback[:2000]
        assert "raise_it" in error.traceback, error.traceback[:2000]
        assert expect.cls.__name__ in error.traceback, error.traceback[:2000]
        assert error.type_name in str(error)
        return
    assert type(error) is expect.cls, (
        f"expected {expect.cls.__qualname__} or RemoteError, got {safe_describe(error)}"
    )
    if expect.message is not None:
        assert str(error) == expect.message, safe_describe(error)
    for name, value in expect.attrs.items():
        assert getattr(error, name) == value, name


def bad_then_good(p: Pool, submit_bad: Callable[[], Future[Any]]) -> Future[Any]:
    """Submit a bad task, then a normal one behind it; return the bad one's future, done.

    The pool has one worker, which runs its tasks in order and answers in order:
    once the normal task is done, the bad one must be. So a future that would
    never end is caught without waiting for a timeout.
    """
    future = submit_bad()
    trouble: BaseException | None = None
    try:
        assert p.submit(square, 12).result(timeout=TIMEOUT) == 144
    except BaseException as exc:  # SystemExit too: a broken pool may raise anything
        trouble = exc
    if trouble is not None or not future.done():
        close(p)  # see settled()
    assert future.done(), (
        "the bad task never ended (its future would hang forever); "
        f"the normal task queued behind it got: {safe_describe(trouble)}"
    )
    assert trouble is None, f"the pool cannot run a normal task after it: {safe_describe(trouble)}"
    return future


@pytest.mark.parametrize("route", ["submit", "map"])
@pytest.mark.parametrize("case", ODD_EXCEPTIONS)
def test_odd_exception_raised_in_a_worker(solo: Pool, case: str, route: str) -> None:
    with settled(solo):
        raise_it, expect = odd_exceptions()[case]
        if route == "submit":
            error = bad_then_good(solo, lambda: solo.submit(raise_it)).exception(timeout=0)
        else:
            error = None
            try:
                list(solo.map(raise_it, [0]))
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: what the task raised
                error = exc
            assert solo.submit(square, 12).result(timeout=TIMEOUT) == 144
        check_error(error, expect)


# --- arguments and results with odd pickling ------------------------------------------


def odd_objects() -> dict[str, Callable[[], object]]:
    """Objects whose pickling misbehaves, by name; classes defined here travel by value."""

    def in_caller() -> bool:
        return multiprocessing.parent_process() is None

    class ReduceRaises:
        def __reduce__(self) -> Any:
            raise RuntimeError("no reduce for you")

    class ReduceReturnsNone:
        def __reduce__(self) -> Any:
            return None

    class ReduceReturnsInt:
        def __reduce__(self) -> Any:
            return 42

    class ReduceNotCallable:
        def __reduce__(self) -> Any:
            return (42, ())

    class ReduceAndReprRaise:
        def __reduce__(self) -> Any:
            raise RuntimeError("no reduce for you")

        def __repr__(self) -> str:
            raise RuntimeError("no repr either")

    class ReduceExits:
        def __reduce__(self) -> Any:
            sys.exit(3)

    def refuse(*args: object) -> NoReturn:
        raise LookupError("refused to rebuild")

    class RebuildRaises:
        def __reduce__(self) -> Any:
            return (refuse, ())

    def refuse_in_caller() -> str:
        if in_caller():
            raise LookupError("refused to rebuild in the caller")
        return "rebuilt in a worker"

    class RebuildRaisesInCaller:
        def __reduce__(self) -> Any:
            return (refuse_in_caller, ())

    def refuse_in_worker() -> str:
        if not in_caller():
            raise LookupError("refused to rebuild in a worker")
        return "rebuilt in the caller"

    class RebuildRaisesInWorker:
        def __reduce__(self) -> Any:
            return (refuse_in_worker, ())

    def exit_in_caller() -> str:
        if in_caller():
            raise SystemExit("rebuilt in the caller")
        return "rebuilt in a worker"

    class RebuildExitsInCaller:
        def __reduce__(self) -> Any:
            return (exit_in_caller, ())

    class Substitutes:
        def __reduce__(self) -> Any:
            return (str, ("substituted",))

    def deep() -> object:
        value: Any = 0
        for _ in range(100_000):
            value = [value]
        return value

    return {
        "__reduce__ raises": ReduceRaises,
        "__reduce__ returns None": ReduceReturnsNone,
        "__reduce__ returns an int": ReduceReturnsInt,
        "__reduce__ returns a non-callable": ReduceNotCallable,
        "__reduce__ and __repr__ raise": ReduceAndReprRaise,
        "__reduce__ calls sys.exit": ReduceExits,
        "rebuild raises": RebuildRaises,
        "rebuild raises in the caller": RebuildRaisesInCaller,
        "rebuild raises in a worker": RebuildRaisesInWorker,
        "rebuild raises SystemExit in the caller": RebuildExitsInCaller,
        "rebuilds as another object": Substitutes,
        "a lock": threading.Lock,
        "a generator": lambda: (i for i in range(3)),
        "nested 100000 deep": deep,
    }


ODD_OBJECTS = list(odd_objects())

# What each does as an argument: refused at submit, or its rebuild's error from
# the task, or it works (and becomes this value in the worker).
AT_SUBMIT = "refused at submit"
AS_ARGUMENT: dict[str, Any] = {
    "__reduce__ raises": AT_SUBMIT,
    "__reduce__ returns None": AT_SUBMIT,
    "__reduce__ returns an int": AT_SUBMIT,
    "__reduce__ returns a non-callable": AT_SUBMIT,
    "__reduce__ and __repr__ raise": AT_SUBMIT,
    "__reduce__ calls sys.exit": SystemExit,  # the caller's own exit, not swallowed
    "rebuild raises": LookupError,
    "rebuild raises in the caller": ("works", "rebuilt in a worker"),
    "rebuild raises in a worker": LookupError,
    "rebuild raises SystemExit in the caller": ("works", "rebuilt in a worker"),
    "rebuilds as another object": ("works", "substituted"),
    "a lock": AT_SUBMIT,
    "a generator": AT_SUBMIT,
    "nested 100000 deep": AT_SUBMIT,
}


@pytest.mark.parametrize("route", ["submit", "keyword", "map"])
@pytest.mark.parametrize("case", ODD_OBJECTS)
def test_odd_argument(solo: Pool, case: str, route: str) -> None:
    """Refused at the call naming the argument, or its task fails clearly, or it works."""
    with settled(solo):
        make = odd_objects()[case]
        outcome = AS_ARGUMENT[case]
        if route == "submit":
            call: Callable[[], Any] = lambda: solo.submit(identity, make())  # noqa: E731
            where = "argument 0 ("
        elif route == "keyword":
            call = lambda: solo.submit(lambda **kw: kw["odd"], odd=make())  # noqa: E731
            where = "keyword argument 'odd' ("
        else:
            call = lambda: solo.map(identity, [make()])  # noqa: E731
            where = "item 0 ("
        if outcome is AT_SUBMIT:
            with pytest.raises(SerializationError) as info:
                call()
            assert where in str(info.value), str(info.value)
            assert not started(solo), "a refused call started the pool"
        elif outcome is SystemExit:
            with pytest.raises(SystemExit):
                call()
            assert not started(solo), "a refused call started the pool"
        elif route == "map":
            try:
                got: Any = list(call())
            except (LookupError, SerializationError, RemoteError) as exc:
                got = exc
            if isinstance(outcome, tuple):
                assert got == [outcome[1]]
            else:
                assert isinstance(got, (outcome, SerializationError, RemoteError)), safe_describe(got)
        else:
            future = bad_then_good(solo, call)
            error = future.exception(timeout=0)
            if isinstance(outcome, tuple):
                assert error is None, safe_describe(error)
                assert future.result() == outcome[1]
            else:
                assert isinstance(error, (outcome, SerializationError, RemoteError)), safe_describe(error)
        assert solo.submit(square, 11).result(timeout=TIMEOUT) == 121


# What each does as a result: the task fails with SerializationError (or a
# RemoteError), or it works and is this value in the caller.
AS_RESULT: dict[str, Any] = {
    "rebuild raises in a worker": "rebuilt in the caller",
    "rebuilds as another object": "substituted",
}


@pytest.mark.parametrize("route", ["submit", "map"])
@pytest.mark.parametrize("case", ODD_OBJECTS)
def test_odd_result(solo: Pool, case: str, route: str) -> None:
    """An odd result fails its task with SerializationError (or works); the worker lives on."""
    with settled(solo):
        make = odd_objects()[case]
        if route == "submit":
            first = solo.submit(os.getpid).result(timeout=TIMEOUT)
            future = bad_then_good(solo, lambda: solo.submit(make))
            error = future.exception(timeout=0)
            if case in AS_RESULT:
                assert error is None, safe_describe(error)
                assert future.result() == AS_RESULT[case]
            else:
                assert isinstance(error, (SerializationError, RemoteError)), safe_describe(error)
                assert "result" in str(error), str(error)
            assert solo.submit(os.getpid).result(timeout=TIMEOUT) == first, "the worker was replaced"
        else:
            try:
                got: Any = list(solo.map(lambda _: make(), [0]))
            except BaseException as exc:
                got = exc
            if case in AS_RESULT:
                assert got == [AS_RESULT[case]], safe_describe(
                    got if isinstance(got, BaseException) else None
                )
            else:
                assert isinstance(got, (SerializationError, RemoteError)), safe_describe(got)
            assert solo.submit(square, 11).result(timeout=TIMEOUT) == 121
