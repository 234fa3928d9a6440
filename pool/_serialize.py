"""Everything that turns objects into bytes and back, in one place.

Functions and arguments go through cloudpickle (so lambdas, closures and
functions defined in ``__main__`` run under every start method); results use
the same. Exceptions get a reduction of their own:

* the default ``BaseException.__reduce__`` rebuilds an exception by calling
  ``cls(*args)``, which breaks for the very common ``__init__(self, a, b)``
  that passes one formatted message to ``super().__init__``. We rebuild user
  exceptions without calling ``__init__`` (as pickle does for any other
  object) and restore ``args`` and ``__dict__``;
* tracebacks, ``__cause__``, ``__context__`` and notes travel too (the
  traceback through tblib), so ``future.result()`` shows the remote frames.

Whatever cannot make the trip becomes a `RemoteError` that still carries the
type name, the message and the formatted remote traceback.
"""

from __future__ import annotations

import functools
import io
import pickle
import reprlib
import sys
import types
from collections import ChainMap
from collections.abc import Callable, Mapping
from types import CodeType, TracebackType

from ._errors import RemoteError, SerializationError
from ._segments import Segment, dumps_out_of_band

TYPE_CHECKING = False  # typing costs a worker's start 2 ms: see pool._zygote
if TYPE_CHECKING:
    from typing import Any

    _Extras = tuple[Any, Any, bool, Any, Any]

PROTOCOL = 5
loads = pickle.loads


def dumps(obj: object) -> bytes:
    """Pickle anything cloudpickle can, with the exception rules above."""
    buffer = io.BytesIO()
    _pickler()(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def _short_repr(obj: object) -> str:
    try:
        return reprlib.repr(obj)
    except Exception:  # noqa: BLE001  # a broken __repr__ must not hide the real error
        return f"<{type(obj).__qualname__} object>"


def describe_callable(fn: object) -> str:
    """A short human name for a task's function, used in errors and notes."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        func = getattr(fn, "func", None)  # functools.partial
        if func is not None:
            return f"partial({describe_callable(func)})"
        return type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a task's function, naming it if it cannot be pickled."""
    try:
        if _named_by_reference(fn):
            return pickle.dumps(fn, protocol=PROTOCOL)
        return dumps(fn)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the function {describe_callable(fn)}: {type(exc).__name__}: {exc}"
        ) from exc


def _named_by_reference(fn: object) -> bool:
    """Whether plain pickle writes ``fn`` as cloudpickle would: by its module and name.

    True for a function or builtin found under its own name in a module any
    process can import (not ``__main__``, not registered with cloudpickle to
    go by value). Then neither side needs cloudpickle loaded for it: for a
    job of tiny tasks on module functions (``pool run``), cloudpickle's import
    would be most of a fresh pool's start.
    """
    if type(fn) not in (types.FunctionType, types.BuiltinFunctionType):
        return False
    module_name = getattr(fn, "__module__", None)
    if not isinstance(module_name, str) or module_name == "__main__":
        return False
    module = sys.modules.get(module_name)
    if module is None or (getattr(module, "__spec__", None) is None and not hasattr(module, "__file__")):
        return False  # made at run time: only its value can travel
    found: object = module
    for part in fn.__qualname__.split("."):  # type: ignore[attr-defined]
        found = getattr(found, part, None)
    if found is not fn:
        return False
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is not None:
        by_value = cloudpickle.list_registry_pickle_by_value()
        parts = module_name.split(".")
        if any(".".join(parts[:end]) in by_value for end in range(1, len(parts) + 1)):
            return False
    return True


def dumps_arguments(fn_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """Pickle a call's arguments, in the caller, naming the one that fails."""
    try:
        return dumps((args, kwargs))
    except Exception as exc:
        raise _unpicklable_arguments(fn_name, args, kwargs, exc) from exc


# Values plain pickle writes exactly as cloudpickle would, and faster: no
# Python-level pickler to set up. Bytes only while small (big ones go out of band).
_PLAIN = frozenset({int, float, str, bool, type(None), complex})
_PLAIN_BYTES_MAX = 4096
# A tuple or list this short is looked at item by item for plain values.
_PLAIN_ITEMS = 16


def _plain(values: Any, nested: bool = True) -> bool:
    """Whether each value is plain, or (``nested``) a short tuple or list of plain values."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN or (kind is bytes and len(value) <= _PLAIN_BYTES_MAX):
            continue
        if not (
            nested and (kind is tuple or kind is list) and len(value) <= _PLAIN_ITEMS and _plain(value, False)
        ):
            return False
    return True


def dumps_call(
    fn_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[bytes, Segment | None]:
    """As `dumps_arguments`, with big buffers out of band (see `pool._segments`)."""
    try:
        if len(args) <= 8 and _plain(args) and (not kwargs or _plain(kwargs.values())):
            return pickle.dumps((args, kwargs), protocol=PROTOCOL), None
        return dumps_out_of_band((args, kwargs), _pickler())
    except Exception as exc:  # also a list another thread changed since it was found plain
        raise _unpicklable_arguments(fn_name, args, kwargs, exc) from exc


def dumps_items(fn_name: str, first: int, items: list[Any]) -> tuple[bytes, Segment | None]:
    """Pickle a chunk of map items, naming the first that fails by position.

    Items' big buffers go out of band, except ``bytes``: looking for those
    would cost every small item (see `pool._segments`).
    """
    try:
        return dumps_out_of_band(items, _pickler(), scan=False)
    except Exception as exc:
        parts = [(f"item {first + i}", item) for i, item in enumerate(items)]
        raise _unpicklable(f"map({fn_name}, ...)", "an item", parts, exc) from exc


def dumps_result(result: object) -> tuple[bytes, Segment | None]:
    """Pickle a task's result in the worker, big buffers out of band."""
    if _plain((result,)):
        return pickle.dumps(result, protocol=PROTOCOL), None
    return dumps_out_of_band(result, _pickler())


def _unpicklable_arguments(
    fn_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], exc: BaseException
) -> SerializationError:
    parts = [
        *((f"argument {i}", a) for i, a in enumerate(args)),
        *((f"keyword argument {k!r}", v) for k, v in kwargs.items()),
    ]
    return _unpicklable(f"{fn_name}()", "its arguments", parts, exc)


def _unpicklable(
    call: str, default: str, parts: list[tuple[str, Any]], exc: BaseException
) -> SerializationError:
    culprit = default
    for where, value in parts:
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # any failure marks the culprit
            culprit = f"{where} ({_short_repr(value)}, of type {type(value).__qualname__})"
            break
    return SerializationError(f"cannot pickle {culprit} of {call}: {type(exc).__name__}: {exc}")


# --- exceptions -------------------------------------------------------------


def _rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None, extras: _Extras
) -> BaseException:
    if cls.__module__ == "builtins":
        exc = cls(*args)  # builtin exceptions' __init__ always matches their args
    else:
        try:
            exc = cls.__new__(cls, *args)
        except TypeError:
            exc = cls(*args)
        exc.args = args
    if state:
        exc.__dict__.update(state)
    return _attach_extras(exc, extras)


def _rebuild_reduced(
    func: Callable[..., BaseException], args: tuple[Any, ...], state: Any, extras: _Extras
) -> BaseException:
    exc = func(*args)
    if state:
        setstate = getattr(exc, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        elif isinstance(state, dict):
            exc.__dict__.update(state)
    return _attach_extras(exc, extras)


def _attach_extras(exc: BaseException, extras: _Extras) -> BaseException:
    cause, context, suppress_context, tb, notes = extras
    exc.__cause__ = cause
    exc.__context__ = context
    exc.__suppress_context__ = suppress_context
    if notes is not None:
        exc.__notes__ = notes  # type: ignore[attr-defined]  # 3.10 has no notes slot
    if tb is not None:
        exc.__traceback__ = rebuild_traceback(tb)
    return exc


def _reduce_exception(exc: BaseException) -> tuple[Any, ...]:
    from tblib import Traceback

    tb = exc.__traceback__
    extras: _Extras = (
        exc.__cause__,
        exc.__context__,
        exc.__suppress_context__,
        Traceback(tb).as_dict() if tb is not None else None,
        getattr(exc, "__notes__", None),
    )
    cls = type(exc)
    if cls.__reduce__ is BaseException.__reduce__ and cls.__reduce_ex__ is BaseException.__reduce_ex__:
        state = {k: v for k, v in vars(exc).items() if k != "__notes__"} or None
        return (_rebuild_exception, (cls, exc.args, state, extras))
    reduced = exc.__reduce_ex__(PROTOCOL)
    if isinstance(reduced, str) or len(reduced) < 2:
        raise pickle.PicklingError(f"unsupported reduction for {cls.__qualname__}")
    state = reduced[2] if len(reduced) > 2 else None
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if k != "__notes__"} or None
    return (_rebuild_reduced, (reduced[0], tuple(reduced[1]), state, extras))


def _reduce_traceback(tb: TracebackType) -> tuple[Any, ...]:
    from tblib import Traceback

    return (rebuild_traceback, (Traceback(tb).as_dict(),))


# Each remote frame is rebuilt by running a one-line stub that fails, under
# the frame's file, line and name (as tblib does). The failing name in the stub is
# wider than any line, so the traceback module underlines nothing, instead of
# underlining the stub's columns on the real line.
_STUB = compile("_" * 512, "<remote>", "exec")


def rebuild_traceback(data: dict[str, Any] | None) -> TracebackType | None:
    """A real traceback object from tblib's ``as_dict()`` form."""
    head: TracebackType | None = None
    tail: TracebackType | None = None
    while data is not None:
        frame = data["tb_frame"]
        code = _STUB.replace(
            co_firstlineno=data["tb_lineno"],
            co_filename=frame["f_code"]["co_filename"],
            co_name=frame["f_code"]["co_name"],
        )
        try:
            exec(code, dict(frame["f_globals"]))  # raises NameError, by design
        except NameError as exc:
            made = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            if made is not None:
                if tail is None:
                    head = made
                else:
                    tail.tb_next = made
                tail = made
        data = data["tb_next"]
    return head


def _reduce_code(code: CodeType) -> tuple[Any, ...]:
    # cloudpickle renames the file of code it pickles by value (functions
    # from __main__) to "<dynamic-code>"; keep the real one, so remote
    # tracebacks name the file and show the source line.
    import cloudpickle

    rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
    return (_rename_code, (rebuild, args, code.co_filename))


def _rename_code(rebuild: Callable[..., CodeType], args: tuple[Any, ...], filename: str) -> CodeType:
    return rebuild(*args).replace(co_filename=filename)


def load_cloudpickle() -> None:
    """Import cloudpickle now rather than at the first call that needs it."""
    _pickler()


@functools.cache
def _pickler() -> type[pickle.Pickler]:
    """cloudpickle's Pickler, plus exceptions as described above and tracebacks.

    A traceback nested in a result (an exception stored in a list, say)
    travels through tblib instead of failing the whole result. Made on first
    use: a worker whose tasks take and return plain values never imports
    cloudpickle, the biggest part of a fresh worker's start.
    """
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = ChainMap(  # noqa: RUF012  # pickle reads it on the class, as cloudpickle sets it
            {TracebackType: _reduce_traceback, CodeType: _reduce_code},
            cloudpickle.Pickler.dispatch_table,
        )

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, BaseException):
                return _reduce_exception(obj)
            return super().reducer_override(obj)

    return _Pickler


def format_exception(exc: BaseException) -> str:
    try:
        import traceback  # not before a task fails: it costs a worker's start 3 ms

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001  # a broken __str__ must not lose the error
        return f"{type(exc).__qualname__}: <traceback could not be formatted>"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001  # a broken __str__ must not lose the error
        return f"<str() of {type(exc).__qualname__} failed>"


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception raised in a worker; never raises.

    The result unpickles with `loads_exception`: as the exception itself when
    it survives a round trip here, else as a `RemoteError`.
    """
    described = (
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        _safe_str(exc),
        format_exception(exc),
    )
    try:
        payload = dumps(exc)
        pickle.loads(payload)  # prove it rebuilds before the caller relies on it
    except BaseException:  # noqa: BLE001  # any failure means: send the description
        payload = None
    return pickle.dumps((payload, described), protocol=PROTOCOL)


def loads_exception(data: bytes) -> BaseException:
    """Rebuild an exception sent by `dumps_exception`, or a `RemoteError`."""
    payload, (type_name, message, formatted) = pickle.loads(data)
    if payload is not None:
        try:
            exc = pickle.loads(payload)
            if isinstance(exc, BaseException):
                return exc
        except KeyboardInterrupt:
            raise  # Ctrl-C in the caller's thread while it rebuilds: the user's, not the task's
        except BaseException:  # noqa: BLE001  # even SystemExit: the description stands in for it
            pass
    return RemoteError(type_name, message, formatted)


def drop_frames_of(filename: str, exc: BaseException) -> BaseException:
    """Drop the leading traceback frames of ``filename``, so it starts in the user's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == filename:
        tb = tb.tb_next
    exc.__traceback__ = tb
    return exc


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 and when ``__notes__`` is not a list."""
    notes = getattr(exc, "__notes__", None)
    if notes is not None and not isinstance(notes, list):
        exc.__notes__ = [str(n) for n in notes] if isinstance(notes, (tuple, set)) else [str(notes)]  # type: ignore[attr-defined]
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)
    else:  # Python 3.10: kept for callers that read __notes__
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]
