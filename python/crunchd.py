"""crunchd - serve Python functions from crunchd(8), the worker side of its protocol.

A program declares its functions with @function and then calls serve()::

    import crunchd
    from crunchd import Arg, function, serve

    model = load_model()          # module level: runs once per worker process

    @function(args=[Arg("n", int, min=0, max=90, default=10, description="index")],
              pure=True, deadline=10, content_type="text/plain; charset=utf-8")
    def pyfib(n):
        ...
        if crunchd.cancelled():   # the deadline passed, the client left, ...
            return None           # answered "cancelled", whatever is returned
        crunchd.progress(0.5, "half way")
        return str(result)        # str (sent as UTF-8) or bytes

    @function(args=[Arg("x", float, min=-1e9, max=1e9)], batch=32, max_delay=0.005)
    def double(x):                # x is a list of up to 32 floats: one per call
        return [f"{2 * v}" for v in x]  # one result per call, in order

    serve()

crunchd runs the program as N worker processes and speaks to each over its stdin and stdout
(see crunchd-worker-protocol(7), version 1); stderr goes to crunchd's log. The module needs
only the standard library.

Batches: a function declared with batch=N is cheaper per call when it computes many calls at
once (a vectorised numpy pass, a model's forward pass). crunchd then groups up to N queued calls
(waiting at most max_delay seconds for company) and the function receives lists: one list per
argument, all of the same length n (1 <= n <= N), call i being made of the i-th elements. It
returns a list (or tuple) of n results, in the same order; an item may be an Exception instance
instead, which fails that call alone (with the exception's type and text, as when a plain
function raises). An exception raised by the function fails every call of the batch. A single
call that crunchd sends on its own comes as a batch of one.

DESIGN: two threads. The main thread runs serve(): it sends `hello`, then takes calls (and
batches) from a queue one at a time, runs the user's function and sends the final reply. The reader thread
reads frames from crunchd, checks them (any violation: a message on stderr and exit 1, at
once, even during a call), puts `call`s and the end of input on the queue, and handles `cancel`
itself by setting the running call's flag, so that cancelled() turns true while the function
runs. Frames go out under one lock (_send), which also orders progress against the final
reply: the call in flight (_current) is cleared under that lock before its reply is written, so
no progress for it can follow the reply and the reader never mistakes the next call for one
that came out of turn.
"""

import base64
import inspect
import json
import math
import os
import queue
import signal
import struct
import sys
import threading
import time
import traceback

__all__ = ["Arg", "DeclarationError", "function", "serve", "cancelled", "progress", "PROTOCOL"]

PROTOCOL = 1
MAX_HEADER = 1 << 20  # bytes, both ways (the protocol's limit)
MAX_PAYLOAD = 256 << 20  # bytes: what this module accepts, and what crunchd accepts
MAX_MESSAGE = 255  # bytes of an error message, as the C ABI's CrunchdResult.error
PROGRESS_INTERVAL = 0.2  # seconds between two progress frames of one call, at least
MAX_NAME = 64
MAX_BATCH = 1024  # the largest batch a function may declare

_TYPES = {int: "int", float: "float", str: "string", bytes: "bytes"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class DeclarationError(ValueError):
    """A declaration that crunchd would refuse, raised where it is made."""


class ProtocolError(Exception):
    """crunchd sent something the protocol does not allow."""


def _valid_name(name):
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and set(name) <= _NAME_CHARS


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_line_text(value, what, where):
    if not isinstance(value, str):
        raise DeclarationError(f"{where}: {what} must be a str, not {type(value).__name__}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise DeclarationError(f"{where}: {what} must be one line without control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DeclarationError(f"{where}: {what} is not valid Unicode ({e.reason})") from None
    return value


class Arg:
    """One declared argument: the C ABI's CrunchdArg.

    type is int (64-bit), float (finite), str (UTF-8) or bytes. min and max are inclusive: the
    value's range for int and float (both required), the length for str (in characters) and
    bytes (in bytes; min defaults to 0, max is required). default is a value of the type, used
    when a request leaves the argument out; None (the default) makes the argument required.
    """

    def __init__(self, name, type, *, min=None, max=None, default=None, description=None):
        where = f"argument {name!r}"
        if not _valid_name(name):
            raise DeclarationError(f"{where}: a name must match [a-z0-9_]+ (at most {MAX_NAME})")
        if type not in _TYPES:
            raise DeclarationError(f"{where}: type must be int, float, str or bytes, not {type!r}")
        if min is None and type in (str, bytes):
            min = 0
        for bound, value in (("min", min), ("max", max)):
            if value is None:
                raise DeclarationError(f"{where}: {bound} is required for type {type.__name__}")
            if not _is_number(value) or not math.isfinite(value):
                raise DeclarationError(f"{where}: {bound} must be a finite number, got {value!r}")
        if not min <= max:
            raise DeclarationError(f"{where}: min ({min!r}) is above max ({max!r})")
        if type in (str, bytes) and min < 0:
            raise DeclarationError(f"{where}: a length bound cannot be negative")
        self.name, self.type, self.min, self.max = name, type, min, max
        self.description = None if description is None else _one_line_text(description, "description", where)
        self.default = None if default is None else self._check_default(default, where)

    def _check_default(self, value, where):
        kind = self.type
        if kind is float and _is_number(value):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DeclarationError(
                f"{where}: default must be {kind.__name__}, not {type(value).__name__}")
        if kind is float and not math.isfinite(value):
            raise DeclarationError(f"{where}: default must be finite")
        if kind is int and not -(1 << 63) <= value < (1 << 63):
            raise DeclarationError(f"{where}: default {value} is not a 64-bit integer")
        if kind is str:
            if "\0" in value:
                raise DeclarationError(f"{where}: default cannot contain NUL")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DeclarationError(f"{where}: default is not valid Unicode ({e.reason})") from None
        size = len(value) if kind in (str, bytes) else value
        if not self.min <= size <= self.max:
            what = {str: "characters long", bytes: "bytes long"}.get(kind, "")
            shown = f"{size} {what}" if what else repr(value)
            raise DeclarationError(
                f"{where}: default ({shown}) is outside [{self.min!r}, {self.max!r}]")
        return value

    def _default_text(self):
        """The default as crunchd parses it: as in a query string, bytes in base64."""
        if self.default is None:
            return None
        if self.type is bytes:
            return base64.b64encode(self.default).decode("ascii")
        if self.type is float:
            return repr(self.default)
        return str(self.default)

    def _declaration(self):
        decl = {"name": self.name, "type": _TYPES[self.type], "min": self.min, "max": self.max,
                "default": self._default_text()}
        if self.description is not None:
            decl["description"] = self.description
        return decl


class _Function:
    def __init__(self, fn, name, args, pure, deadline, content_type, description, batch=None,
                 max_delay=0.0):
        self.fn, self.name, self.args = fn, name, args
        self.pure, self.deadline, self.content_type = pure, deadline, content_type
        self.description = description
        self.batch, self.max_delay = batch, max_delay  # batch: None, or the largest batch

    def _declaration(self):
        decl = {"name": self.name, "description": self.description, "pure": self.pure,
                "deadline": self.deadline, "content_type": self.content_type,
                "args": [a._declaration() for a in self.args]}
        if self.batch is not None:
            decl["max_batch"] = self.batch
            decl["max_delay"] = self.max_delay
        return decl


_functions = {}  # name -> _Function, in declaration order


def function(*, args=(), pure=False, deadline=60.0, content_type="text/plain; charset=utf-8",
             description=None, name=None, batch=None, max_delay=0.0):
    """Declares a function for crunchd (the C ABI's CrunchdFunction) and returns it unchanged.

    args: a list of Arg, passed to the function as keyword arguments. pure: the result depends
    only on the arguments, so crunchd may share one computation between identical requests (and
    cache it). deadline: seconds a call may take before crunchd cancels it, in (0, 86400].
    content_type: of every result. description: one line; by default the first line of the
    docstring. name: /fn/NAME, [a-z0-9_]+; by default the Python function's name.

    batch: None (the default), or the largest number of calls, 1 to 1024, that the function
    computes at once (the C ABI's max_batch). It then receives a list per argument, all n long
    (n <= batch), and returns a list of n results in the same order, where an item may be an
    Exception instance that fails its call alone; a single call comes as a batch of one.
    max_delay: with batch, the longest crunchd may hold a call, in seconds (0 to 1), waiting for
    others to fill a batch while other calls of the function are under way (a lone call runs at
    once); never when that would make a call miss its deadline. Every call of
    a batch shares the process: deadline applies to the batch as a whole.
    Raises DeclarationError for anything crunchd would refuse.
    """

    def declare(fn):
        fname = fn.__name__ if name is None else name
        where = f"function {fname!r}"
        if not _valid_name(fname):
            raise DeclarationError(
                f"{where}: a name must match [a-z0-9_]+ (at most {MAX_NAME}); pass name=...")
        if fname in _functions:
            raise DeclarationError(f"{where}: declared twice")
        if not callable(fn):
            raise DeclarationError(f"{where}: @function applies to a function")
        arglist = list(args)
        for a in arglist:
            if not isinstance(a, Arg):
                raise DeclarationError(f"{where}: args must be Arg(...), not {type(a).__name__}")
        seen = set()
        for a in arglist:
            if a.name in seen:
                raise DeclarationError(f"{where}: argument {a.name!r} declared twice")
            seen.add(a.name)
        if not isinstance(pure, bool):
            raise DeclarationError(f"{where}: pure must be True or False")
        if batch is not None and (not _is_int(batch) or not 1 <= batch <= MAX_BATCH):
            raise DeclarationError(f"{where}: batch must be None or an int in 1..{MAX_BATCH}, got {batch!r}")
        if not _is_number(max_delay) or not 0 <= max_delay <= 1:
            raise DeclarationError(f"{where}: max_delay must be in [0, 1] seconds, got {max_delay!r}")
        if batch is None and max_delay != 0:
            raise DeclarationError(f"{where}: max_delay needs batch=N")
        if not _is_number(deadline) or not 0 < deadline <= 86400:
            raise DeclarationError(f"{where}: deadline must be in (0, 86400] seconds, got {deadline!r}")
        if not isinstance(content_type, str) or not content_type:
            raise DeclarationError(f"{where}: content_type must be a non-empty str")
        _one_line_text(content_type, "content_type", where)
        if not content_type.isascii():
            raise DeclarationError(f"{where}: content_type must be ASCII (an HTTP header value)")
        text = description
        if text is None:
            doc = inspect.getdoc(fn) or ""
            text = doc.strip().split("\n", 1)[0].strip()
        text = _one_line_text(text, "description", where)
        try:
            inspect.signature(fn).bind(**{a.name: None for a in arglist})
        except TypeError as e:
            names = ", ".join(a.name for a in arglist) or "none"
            raise DeclarationError(
                f"{where}: cannot be called with its declared arguments ({names}) as keywords: {e}"
            ) from None
        except ValueError:
            pass  # no signature to check (a builtin): the call will tell
        _functions[fname] = _Function(fn, fname, arglist, pure, float(deadline), content_type, text,
                                      batch, float(max_delay))
        return fn

    return declare


# ---- the stream ----

_out_fd = None  # private duplicate of the original stdout: frames only
_in_file = None  # private reader on the original stdin
_send_lock = threading.Lock()
_current = None  # the _Call in flight (written under _send_lock), or None
_stdin_closed = False


class _Call:
    """A call, or a batch of calls (items: one kwargs dict per call; None for a call)."""
    __slots__ = ("id", "function", "kwargs", "items", "cancelled", "last_progress")

    def __init__(self, call_id, fn, kwargs, items=None):
        self.id, self.function, self.kwargs, self.items = call_id, fn, kwargs, items
        self.cancelled = False
        self.last_progress = {}  # item (None: the call, or every call of the batch) -> time


def _take_stdio():
    """Keeps private handles on fds 0 and 1 and points them elsewhere: fd 1 (and sys.stdout) at
    stderr, fd 0 (and sys.stdin) at /dev/null, so that print(), input(), C extensions and child
    processes can neither write into nor read from the protocol stream. Idempotent."""
    global _out_fd, _in_file
    if _out_fd is not None:
        return
    try:
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        pass
    _out_fd = os.dup(1)  # close-on-exec, as every fd Python makes
    in_fd = os.dup(0)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _in_file = os.fdopen(in_fd, "rb")
    sys.stdout = sys.stderr
    # the program's own child processes are not crunchd's workers, even if they import us
    os.environ.pop("CRUNCHD_WORKER_PROTOCOL", None)
    sys.stdin = open(os.devnull, "r")


def _ignore_sigint():
    """crunchd stops a worker by closing its stdin. A Ctrl-C meant for a crunchd in the
    foreground reaches its workers too, and must not kill the calls it lets finish."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        pass  # imported from another thread than the main one: serve() does it


def _write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(_out_fd, view):]


def _send(header, payload=b"", *, for_call=None):
    """Writes one frame. With for_call, only while that call is in flight (progress)."""
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    head = head.encode("utf-8")
    with _send_lock:
        if for_call is not None and _current is not for_call:
            return
        try:
            _write_all(struct.pack(">II", len(head), len(payload)) + head)
            if payload:
                _write_all(payload)
        except OSError as e:
            if _stdin_closed:
                raise SystemExit(0)  # crunchd is stopping us: nobody reads any more
            _die(f"cannot write to crunchd: {e.strerror or e}")


def _die(message):
    """crunchd broke the protocol (or the pipe): say why, exit 1 at once, whatever is running."""
    try:
        sys.stderr.write(f"{_program_name()}: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(1)


def _program_name():
    return os.path.basename(sys.argv[0] or "python") if sys.argv else "python"


# ---- reading from crunchd (the reader thread) ----

def _read_exact(n):
    """n bytes, or b"" at end of input before the first byte; a partial read is an error."""
    data = _in_file.read(n) if n else b""
    if n and not data:
        return b""
    if len(data) != n:
        raise ProtocolError(f"input ended inside a frame ({len(data)} of {n} bytes)")
    return data


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError(f"member {key!r} appears twice")
        obj[key] = value
    return obj


def _reject_constant(name):
    raise ProtocolError(f"{name} is not JSON")


def _read_frame():
    """(header dict, payload) or None at the end of input."""
    prefix = _read_exact(8)
    if not prefix:
        return None
    if len(prefix) != 8:
        raise ProtocolError("input ended inside a frame")
    hlen, plen = struct.unpack(">II", prefix)
    if not 1 <= hlen <= MAX_HEADER:
        raise ProtocolError(f"header length {hlen} outside 1..{MAX_HEADER}")
    if plen > MAX_PAYLOAD:
        raise ProtocolError(f"payload length {plen} above this worker's limit {MAX_PAYLOAD}")
    raw = _read_exact(hlen)
    payload = _read_exact(plen)
    if len(raw) != hlen or len(payload) != plen:
        raise ProtocolError("input ended inside a frame")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if not isinstance(header.get("type"), str):
        raise ProtocolError('header has no string member "type"')
    return header, payload


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _arg_value(arg, value, payload, fname):
    where = f"call of {fname}: argument {arg.name!r}"
    if arg.type is int:
        if not _is_int(value) or not -(1 << 63) <= value < (1 << 63):
            raise ProtocolError(f"{where} is not a 64-bit integer")
        return value
    if arg.type is float:
        if not _is_number(value) or not math.isfinite(value):
            raise ProtocolError(f"{where} is not a finite number")
        return float(value)
    if arg.type is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} is not a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{where} is not valid Unicode") from None
        return value
    if (not isinstance(value, dict) or set(value) != {"offset", "length"}
            or not _is_int(value["offset"]) or not _is_int(value["length"])):
        raise ProtocolError(f'{where} is not {{"offset":O,"length":L}}')
    offset, length = value["offset"], value["length"]
    if offset < 0 or length < 0 or offset + length > len(payload):
        raise ProtocolError(f"{where}: {offset}+{length} is outside the {len(payload)}-byte payload")
    return bytes(payload[offset:offset + length])


def _parse_call(header, payload):
    call_id = header.get("id")
    if not _is_int(call_id):
        raise ProtocolError('call without an integer "id"')
    fname = header.get("function")
    fn = _functions.get(fname) if isinstance(fname, str) else None
    if fn is None:
        raise ProtocolError(f"call of an undeclared function {fname!r}")
    if "deadline" in header and not _is_number(header["deadline"]):
        raise ProtocolError('call with a "deadline" that is not a number')
    args = header.get("args")
    if not isinstance(args, dict):
        raise ProtocolError('call without an "args" object')
    return _Call(call_id, fn, _parse_args(fn, args, payload, f"call of {fn.name}"))


def _parse_args(fn, args, payload, where):
    if not isinstance(args, dict):
        raise ProtocolError(f'{where}: no "args" object')
    declared = {a.name for a in fn.args}
    if set(args) != declared:
        missing, unknown = sorted(declared - set(args)), sorted(set(args) - declared)
        raise ProtocolError(f"{where}: arguments missing {missing}, unknown {unknown}")
    return {a.name: _arg_value(a, args[a.name], payload, fn.name) for a in fn.args}


def _parse_batch(header, payload):
    batch_id = header.get("id")
    if not _is_int(batch_id):
        raise ProtocolError('batch without an integer "id"')
    fname = header.get("function")
    fn = _functions.get(fname) if isinstance(fname, str) else None
    if fn is None:
        raise ProtocolError(f"batch of an undeclared function {fname!r}")
    if fn.batch is None or fn.batch < 2:
        raise ProtocolError(f"batch of {fn.name}, which takes no batches")
    if "deadline" in header and not _is_number(header["deadline"]):
        raise ProtocolError('batch with a "deadline" that is not a number')
    calls = header.get("calls")
    if not isinstance(calls, list) or not 1 <= len(calls) <= fn.batch:
        raise ProtocolError(f'batch of {fn.name}: "calls" must be a list of 1 to {fn.batch} calls')
    items = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise ProtocolError(f"batch of {fn.name}: call {i} is not an object")
        items.append(_parse_args(fn, call.get("args"), payload, f"batch of {fn.name}: call {i}"))
    return _Call(batch_id, fn, None, items)


def _reader(calls):
    global _current, _stdin_closed
    try:
        while True:
            frame = _read_frame()
            if frame is None:
                _stdin_closed = True
                call = _current
                if call is not None:
                    call.cancelled = True
                calls.put(None)
                return
            header, payload = frame
            kind = header["type"]
            if kind in ("call", "batch"):
                call = _parse_call(header, payload) if kind == "call" else _parse_batch(header, payload)
                with _send_lock:
                    if _current is not None:
                        raise ProtocolError(f"call {call.id} while call {_current.id} runs")
                    _current = call
                calls.put(call)
            elif kind == "cancel":
                if not _is_int(header.get("id")):
                    raise ProtocolError('cancel without an integer "id"')
                if payload:
                    raise ProtocolError("cancel with a payload")
                call = _current
                if call is not None and call.id == header["id"]:
                    call.cancelled = True
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
    except ProtocolError as e:
        _die(f"protocol error from crunchd: {e}")
    except BaseException as e:  # a bug here must not leave the main thread waiting forever
        _die(f"reader failed: {type(e).__name__}: {e}")


# ---- running calls (the main thread) ----

def _one_line(text):
    # a message may hold anything, lone surrogates from undecodable file names included, and
    # NUL, which crunchd refuses in a frame (it would cut the string short): written as \x00
    line = " ".join(str(text).split()).replace("\0", "\\x00")
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    data = line.encode("utf-8")
    if len(data) <= MAX_MESSAGE:
        return line
    return data[:MAX_MESSAGE - 3].decode("utf-8", "ignore") + "..."


def _describe(e):
    """"ValueError: n must be odd", or just the type when the exception has no text."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _print_traceback(e):
    """The traceback from the user's function down (this module's frame is left out)."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    traceback.print_exception(type(e), e, tb or e.__traceback__)
    sys.stderr.flush()


def _body(fn, value):
    """(payload, None) for a value a function may return, or (None, error message)."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8"), None
        except UnicodeEncodeError as e:
            return None, _one_line(f"{fn.name} returned a str that is not valid Unicode: {e}")
    if isinstance(value, (bytes, bytearray)):
        body = value
    elif isinstance(value, memoryview):
        body = value.tobytes()  # any shape or item size: its bytes, in C order
    else:
        return None, f"{fn.name} returned {type(value).__name__}, not bytes or str"
    if len(body) > MAX_PAYLOAD:
        return None, f"{fn.name}: result of {len(body)} bytes is above crunchd's limit of {MAX_PAYLOAD}"
    return body, None


def _invoke(call, kwargs):
    """The function's value, or (when it raised) None and the error entry to answer with."""
    try:
        return call.function.fn(**kwargs), None
    except MemoryError as e:
        # the frames in the traceback still hold what the function allocated: free it first
        traceback.clear_frames(e.__traceback__)
        if not call.cancelled:
            try:
                _print_traceback(e)
            except MemoryError:
                pass
        return None, {"status": "error", "message": _one_line(_describe(e)), "kind": "memory"}
    except Exception as e:
        if not call.cancelled:
            _print_traceback(e)
        return None, {"status": "error", "message": _one_line(_describe(e))}


def _run_batch(call, items):
    """One entry per call of the batch ({"status": ...}, body or None) from one run."""
    fn, n = call.function, len(items)
    value, failed = _invoke(call, {a.name: [kw[a.name] for kw in items] for a in fn.args})
    if call.cancelled:
        return [({"status": "cancelled"}, None)] * n
    if failed is not None:
        return [(failed, None)] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        what = f"{len(value)} results" if isinstance(value, (list, tuple)) else type(value).__name__
        message = f"{fn.name} returned {what}, not a list of {n} results"
        return [({"status": "error", "message": message}, None)] * n
    out = []
    for item in value:
        if isinstance(item, BaseException):
            out.append(({"status": "error", "message": _one_line(_describe(item))}, None))
            continue
        body, message = _body(fn, item)
        out.append(({"status": "error", "message": message}, None) if body is None
                   else ({"status": "ok"}, body))
    return out


def _reply(call, entry):
    """A call's final reply from an entry of a batch-result without a body."""
    header = {key: value for key, value in entry.items() if key != "status"}
    header.update(type=entry["status"], id=call.id)
    return header, b""


def _run(call):
    """The final reply for one call or batch: (header, payload)."""
    fn = call.function
    if fn.batch is not None:
        outcomes = _run_batch(call, call.items if call.items is not None else [call.kwargs])
        if call.items is None:  # a call of a batch function: its one outcome, as a call's reply
            entry, body = outcomes[0]
            if entry["status"] == "ok":
                return {"type": "result", "id": call.id}, body
            return _reply(call, entry)
        results, chunks, size = [], [], 0
        for entry, body in outcomes:
            if body is not None and size + len(body) > MAX_PAYLOAD:
                entry, body = {"status": "error", "message": f"{fn.name}: the batch's results "
                               f"pass crunchd's limit of {MAX_PAYLOAD} bytes"}, None
            if body is not None:
                entry = {"status": "ok", "offset": size, "length": len(body)}
                chunks.append(body)
                size += len(body)
            results.append(entry)
        return {"type": "batch-result", "id": call.id, "results": results}, b"".join(chunks)
    value, failed = _invoke(call, call.kwargs)
    if call.cancelled:
        return {"type": "cancelled", "id": call.id}, b""
    if failed is not None:
        return _reply(call, failed)
    body, message = _body(fn, value)
    if body is None:
        return {"type": "error", "id": call.id, "message": message}, b""
    return {"type": "result", "id": call.id}, body


def _finish(call, header, payload):
    global _current
    with _send_lock:
        _current = None  # before the reply: crunchd may send the next call as soon as it reads it
    _send(header, payload)


def cancelled():
    """True once crunchd has asked the running call to stop (its deadline passed, its client
    went away, its job was deleted, crunchd is stopping, or crunchd closed the stream). Cheap:
    check it every few tens of milliseconds of work, then return (or raise); the call is then
    answered "cancelled" whatever it returns. In a batch it is the batch's: true once crunchd
    asks the whole batch to stop (every call of it is gone); the worker is not told of a single
    call of the batch that goes meanwhile. Outside a call (say in a unit test of your function)
    it is always False."""
    call = _current
    return call is not None and call.cancelled


def progress(fraction, message=None, item=None):
    """Reports how far the running call is: fraction in [0, 1], an optional one-line message.
    Call it as often as you like: at most one frame per PROGRESS_INTERVAL seconds is sent, the
    others are dropped. Outside a call it does nothing.

    In a batch function, item=None (the default) reports for every call of the batch, and
    item=i for call i alone (0 <= i < n, the index in the argument lists); each is throttled on
    its own. A batch of one takes item=None or item=0."""
    if not _is_number(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be a number in [0, 1], got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a str or None, not {type(message).__name__}")
    if item is not None and not _is_int(item):
        raise TypeError(f"progress item must be an int or None, not {type(item).__name__}")
    call = _current
    if call is None or _out_fd is None:
        return
    n = len(call.items) if call.items is not None else 1
    if item is not None and not 0 <= item < n:
        raise ValueError(f"progress item {item} is not a call of this batch of {n}")
    if call.items is None:
        item = None  # a call (of a batch function: a batch of one) has no items on the wire
    now = time.monotonic()
    last = call.last_progress.get(item)
    if last is not None and now - last < PROGRESS_INTERVAL:
        return
    call.last_progress[item] = now
    header = {"type": "progress", "id": call.id, "fraction": float(fraction)}
    if message is not None:
        header["message"] = _one_line(message)
    if item is not None:
        header["item"] = item
    _send(header, for_call=call)


def _hello(name, version):
    hello = {"type": "hello", "protocol": PROTOCOL, "name": name, "version": version,
             "functions": [f._declaration() for f in _functions.values()]}
    size = len(json.dumps(hello, ensure_ascii=False).encode("utf-8"))
    if size > MAX_HEADER:
        raise DeclarationError(f"the declarations take {size} bytes, above the protocol's {MAX_HEADER}")
    return hello


def serve(name=None, version="0"):
    """Declares the functions to crunchd and runs calls until crunchd closes the stream; never
    returns (exit status 0 then, 1 when crunchd breaks the protocol). name: the program's name
    in crunchd's log, by default the file's name without .py; version: its version."""
    if name is None:
        name = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "python")
        name = name[:-3] if name.endswith(".py") else name
    where = f"program {name!r}"
    _one_line_text(name, "name", where)
    _one_line_text(version, "version", where)
    if not name:
        raise DeclarationError("serve(): name must not be empty")
    if not _functions:
        raise DeclarationError(f"{where}: no functions declared (use @crunchd.function)")
    hello = _hello(name, version)
    _take_stdio()
    if _in_file.isatty():
        sys.stderr.write(f"{name}: a crunchd worker program (protocol {PROTOCOL}): list it in "
                         "[plugins] load of crunchd.ini, see crunchd-worker-protocol(7)\n")
        raise SystemExit(64)
    _ignore_sigint()
    _send(hello)
    calls = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(calls,), name="crunchd-reader", daemon=True).start()
    while True:
        call = calls.get()
        if call is None:
            # crunchd closed the stream: exit now, whatever threads the functions left running
            sys.stderr.flush()
            os._exit(0)
        header, payload = _run(call)
        _finish(call, header, payload)


# Started by crunchd (which sets CRUNCHD_WORKER_PROTOCOL): take the stream before the program's
# own module-level code (loading a model, say) can print into it. Imported anywhere else (a test,
# a REPL), stdin and stdout stay as they are until serve().
if os.environ.get("CRUNCHD_WORKER_PROTOCOL"):
    _take_stdio()
    _ignore_sigint()
