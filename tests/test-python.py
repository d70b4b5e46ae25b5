"""Tests of python/crunchd.py, the Python side of crunchd-worker-protocol(7).

Each test starts a worker program (plugins/pyexample.py, tests/python/*.py) as a child, as
crunchd does (CRUNCHD_WORKER_PROTOCOL=1, the module's directory on PYTHONPATH), and plays
crunchd's side over its stdin and stdout. Standard library only; prints TAP for automake's
tap-driver (run it with --verbose for unittest's own output instead).
"""
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

SRCDIR = os.environ.get("CRUNCHD_SRCDIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONDIR = os.path.join(SRCDIR, "python")
EXAMPLE = os.path.join(SRCDIR, "plugins", "pyexample.py")
PROGRAMS = os.path.join(SRCDIR, "tests", "python")
TIMEOUT = 10.0


def program(name):
    return os.path.join(PROGRAMS, name)


def frame(header, payload=b""):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">II", len(head), len(payload)) + head + payload


class Worker:
    """One worker process and crunchd's end of its pipes."""

    def __init__(self, path, memory_limit=None, args=()):
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ, CRUNCHD_WORKER_PROTOCOL="1", PYTHONPATH=PYTHONDIR)

        def limit():
            if memory_limit:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

        self.proc = subprocess.Popen([sys.executable, path, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                     preexec_fn=limit)
        self.buffer = b""
        self.next_id = 1

    def send(self, header, payload=b""):
        self.write(frame(header, payload))

    def write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _read(self, n, deadline):
        fd = self.proc.stdout.fileno()
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no frame within {TIMEOUT} s; stderr: {self.errors()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"worker closed its stdout; stderr: {self.errors()}")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        hlen, plen = struct.unpack(">II", self._read(8, deadline))
        header = json.loads(self._read(hlen, deadline).decode("utf-8"))
        return header, self._read(plen, deadline)

    def hello(self):
        header, payload = self.recv()
        assert header["type"] == "hello", header
        assert payload == b"", payload
        return header

    def call(self, function, args, payload=b"", deadline=5.0):
        call_id = self.next_id
        self.next_id += 1
        self.send({"type": "call", "id": call_id, "function": function, "deadline": deadline,
                   "args": args}, payload)
        return call_id

    def reply(self, call_id):
        """The final reply to call_id, and the progress frames before it."""
        progress = []
        while True:
            header, payload = self.recv()
            if header["type"] != "progress":
                break
            progress.append(header)
        assert header.get("id") == call_id, header
        return header, payload, progress

    def close(self, timeout=TIMEOUT):
        """Closes stdin as crunchd does to stop a worker; its exit status."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout)

    def errors(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.stderr.close()


class WorkerTest(unittest.TestCase):
    def start(self, path, **kw):
        worker = Worker(path, **kw)
        self.addCleanup(worker.kill)
        return worker


class TestHello(WorkerTest):
    def test_example_hello(self):
        w = self.start(EXAMPLE)
        hello = w.hello()
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["name"], "pyexample")
        self.assertEqual(hello["version"], "1.0")
        fns = {f["name"]: f for f in hello["functions"]}
        self.assertEqual(list(fns), ["pyfib", "pyprimes", "pysum_batch"])
        self.assertEqual((fns["pysum_batch"]["max_batch"], fns["pysum_batch"]["max_delay"]),
                         (64, 0.005))
        self.assertEqual(fns["pyfib"], {
            "name": "pyfib",
            "description": "The n-th Fibonacci number, computed the slow way (naive recursion), in Python.",
            "pure": True, "deadline": 10.0, "content_type": "text/plain; charset=utf-8",
            "args": [{"name": "n", "type": "int", "min": 0, "max": 90, "default": "10",
                      "description": "which Fibonacci number"}]})
        self.assertIsNone(fns["pyprimes"]["args"][0]["default"])
        self.assertEqual(w.close(), 0)

    def test_every_type_declared(self):
        w = self.start(program("argtypes.py"))
        hello = w.hello()
        self.assertEqual((hello["name"], hello["version"]), ("argtypes", "2.5"))
        args = hello["functions"][0]["args"]
        self.assertEqual([(a["name"], a["type"]) for a in args],
                         [("i", "int"), ("x", "float"), ("s", "string"), ("b1", "bytes"),
                          ("b2", "bytes")])
        self.assertEqual(args[2]["min"], 0)
        self.assertEqual(args[4]["default"], "AP8=")  # b"\x00\xff" in base64
        self.assertNotIn("description", args[0])
        self.assertEqual(hello["functions"][0]["content_type"], "application/json")
        # module-level print() went to stderr, not into the stream before hello
        self.assertIn("loading the model", w.errors())
        self.assertEqual(w.close(), 0)


class TestCalls(WorkerTest):
    def test_fib(self):
        w = self.start(EXAMPLE)
        w.hello()
        for n, expected in ((0, b"0\n"), (10, b"55\n"), (25, b"75025\n")):
            call_id = w.call("pyfib", {"n": n})
            header, payload, _ = w.reply(call_id)
            self.assertEqual(header, {"type": "result", "id": call_id})
            self.assertEqual(payload, expected)
        self.assertEqual(w.close(), 0)

    def test_args_of_every_type(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        payload = b"xx" + bytes(range(256)) + b"\x00\xff"
        call_id = w.call("pyargs", {"i": -(1 << 62), "x": 2.5, "s": "h\u00e9 \u2603",
                                    "b1": {"offset": 2, "length": 256},
                                    "b2": {"offset": 258, "length": 0}}, payload)
        header, body, _ = w.reply(call_id)
        self.assertEqual(header["type"], "result")
        self.assertEqual(json.loads(body), {"i": -(1 << 62), "x": 2.5, "s": "h\u00e9 \u2603",
                                            "b1": bytes(range(256)).hex(), "b2": ""})
        # an integer for a float argument is a JSON number too
        call_id = w.call("pyargs", {"i": 7, "x": 3, "s": "", "b1": {"offset": 0, "length": 1},
                                    "b2": {"offset": 0, "length": 2}}, b"\x01\x02")
        header, body, _ = w.reply(call_id)
        self.assertEqual(json.loads(body)["x"], 3.0)
        self.assertEqual(json.loads(body)["b2"], "0102")
        self.assertEqual(w.close(), 0)

    def test_large_frames_both_ways(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        blob = os.urandom(1 << 20) * 8  # 8 MiB: many pipe buffers each way
        call_id = w.call("pyreverse", {"blob": {"offset": 3, "length": len(blob)}}, b"xyz" + blob)
        header, body, _ = w.reply(call_id)
        self.assertEqual(header["type"], "result")
        self.assertTrue(body == blob[::-1])
        self.assertEqual(w.close(), 0)

    def test_results_bytes_and_str(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        for kind, expected in (("bytes", b"\x00\x01\xfe\xff"), ("bytearray", b"ba"),
                               ("memoryview", struct.pack("=ii", 1, -1)),
                               ("str", "h\u00e9llo \u2603".encode())):
            call_id = w.call("pyreturn", {"kind": kind})
            header, body, _ = w.reply(call_id)
            self.assertEqual((header["type"], body), ("result", expected))
        self.assertEqual(w.close(), 0)

    def test_results_of_other_types_are_errors(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        for kind, message in (("int", "pyreturn returned int, not bytes or str"),
                              ("none", "pyreturn returned NoneType, not bytes or str")):
            call_id = w.call("pyreturn", {"kind": kind})
            header, body, _ = w.reply(call_id)
            self.assertEqual(header, {"type": "error", "id": call_id, "message": message})
            self.assertEqual(body, b"")
        call_id = w.call("pyreturn", {"kind": "surrogate"})
        header, _, _ = w.reply(call_id)
        self.assertEqual(header["type"], "error")
        self.assertIn("not valid Unicode", header["message"])
        self.assertEqual(w.close(), 0)

    def test_exception_is_an_error_with_one_line(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pyfail", {"message": "n must be odd\nsecond line"})
        header, body, _ = w.reply(call_id)
        self.assertEqual(header, {"type": "error", "id": call_id,
                                  "message": "ValueError: n must be odd second line"})
        self.assertIn("Traceback (most recent call last)", w.errors())
        self.assertIn('raise ValueError(message)', w.errors())
        self.assertNotIn("crunchd.py", w.errors())  # the user's frames only
        # a long message is cut to 255 bytes, as the C ABI's error buffer
        call_id = w.call("pyfail", {"message": "\u00e9" * 400})
        header, _, _ = w.reply(call_id)
        self.assertLessEqual(len(header["message"].encode()), 255)
        self.assertTrue(header["message"].endswith("..."))
        # a message with a lone surrogate (an undecodable file name) is escaped, not fatal
        call_id = w.call("pyfail", {"message": "surrogate"})
        header, _, _ = w.reply(call_id)
        self.assertEqual(header["message"], "ValueError: cannot parse \\udcff.csv")
        # the worker goes on serving
        call_id = w.call("pyreturn", {"kind": "str"})
        self.assertEqual(w.reply(call_id)[0]["type"], "result")
        self.assertEqual(w.close(), 0)

    def test_memory_error_has_kind_memory(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pymemory", {})
        header, _, _ = w.reply(call_id)
        self.assertEqual(header, {"type": "error", "id": call_id, "kind": "memory",
                                  "message": "MemoryError"})
        self.assertEqual(w.close(), 0)

    def test_allocating_without_bound_under_a_limit(self):
        w = self.start(program("hog.py"), memory_limit=256 << 20)
        w.hello()
        call_id = w.call("pyhog", {"step_mb": 16})
        header, _, _ = w.reply(call_id)
        self.assertEqual((header["type"], header.get("kind")), ("error", "memory"))
        # the memory was given back: the next call can allocate again
        call_id = w.call("pyhog", {"step_mb": 16})
        self.assertEqual(w.reply(call_id)[0].get("kind"), "memory")
        self.assertEqual(w.close(), 0)

    def test_print_does_not_corrupt_the_stream(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pyprint", {})
        header, body, _ = w.reply(call_id)
        self.assertEqual((header["type"], body), ("result", b"printed\n"))
        call_id = w.call("pyreturn", {"kind": "bytes"})
        self.assertEqual(w.reply(call_id)[1], b"\x00\x01\xfe\xff")
        self.assertEqual(w.close(), 0)
        errors = w.errors()
        for text in ("print() from a function", "sys.stdout.write", "os.write(1)",
                     "a child process's stdout"):
            self.assertIn(text, errors)


class TestCancelAndProgress(WorkerTest):
    def test_cancel_of_a_cooperative_function(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pywait", {"seconds": 30})
        time.sleep(0.1)
        start = time.monotonic()
        w.send({"type": "cancel", "id": call_id})
        header, body, _ = w.reply(call_id)
        self.assertEqual((header, body), ({"type": "cancelled", "id": call_id}, b""))
        self.assertLess(time.monotonic() - start, 2.0)  # 10 ms of work, on a loaded machine
        self.assertEqual(w.close(), 0)

    def test_cancel_of_fib(self):
        w = self.start(EXAMPLE)
        w.hello()
        call_id = w.call("pyfib", {"n": 60})  # years, uncancelled
        time.sleep(0.2)
        start = time.monotonic()
        w.send({"type": "cancel", "id": call_id})
        header, _, _ = w.reply(call_id)
        self.assertEqual(header["type"], "cancelled")
        self.assertLess(time.monotonic() - start, 2.0)  # 10 ms of work, on a loaded machine
        self.assertEqual(w.close(), 0)

    def test_cancel_of_a_spinning_function_after_it_returns(self):
        w = self.start(program("spin.py"))
        w.hello()
        call_id = w.call("pyspin", {"seconds": 2.0})  # the cancel surely comes while it spins
        time.sleep(0.1)
        w.send({"type": "cancel", "id": call_id})
        header, body, _ = w.reply(call_id)
        # it ignored the flag, ran to its end, and its result was dropped
        self.assertEqual((header["type"], body), ("cancelled", b""))
        call_id = w.call("pyecho", {"s": "next"})
        self.assertEqual(w.reply(call_id)[1], b"next")
        self.assertEqual(w.close(), 0)

    def test_cancel_of_another_id_is_ignored(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        w.send({"type": "cancel", "id": 99})  # nothing runs
        call_id = w.call("pywait", {"seconds": 0.3})
        w.send({"type": "cancel", "id": call_id + 1})
        header, body, _ = w.reply(call_id)
        self.assertEqual((header["type"], body), ("result", b"timed out\n"))
        self.assertEqual(w.close(), 0)

    def test_progress_frames_are_rate_limited(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        start = time.monotonic()
        call_id = w.call("pyprogress", {"steps": 100})  # 100 reports in 1 s or more
        header, body, progress = w.reply(call_id)
        elapsed = time.monotonic() - start
        self.assertEqual((header["type"], body), ("result", b"100 steps\n"))
        # the first at once, then at most one per 0.2 s
        self.assertGreaterEqual(len(progress), 3)
        self.assertLessEqual(len(progress), elapsed / 0.2 + 1)
        self.assertEqual(progress[0], {"type": "progress", "id": call_id, "fraction": 0.0,
                                       "message": "step 0"})
        fractions = [p["fraction"] for p in progress]
        self.assertEqual(fractions, sorted(fractions))
        self.assertTrue(all(p["id"] == call_id for p in progress))
        self.assertEqual(w.close(), 0)

    def test_example_reports_progress(self):
        w = self.start(EXAMPLE)
        w.hello()
        call_id = w.call("pyprimes", {"n": 100000})
        header, body, progress = w.reply(call_id)
        self.assertEqual((header["type"], body), ("result", b"9592\n"))
        self.assertGreaterEqual(len(progress), 1)
        self.assertRegex(progress[0]["message"], r"^\d+ of 100000$")
        self.assertEqual(w.close(), 0)


class TestBatches(WorkerTest):
    """Functions declared with batch=N: batch frames, a call as a batch of one."""

    def batch(self, w, function, calls, payload=b""):
        batch_id = w.next_id
        w.next_id += 1
        w.send({"type": "batch", "id": batch_id, "function": function, "deadline": 5.0,
                "calls": [{"args": a} for a in calls]}, payload)
        return batch_id

    def results(self, header, body):
        """Each call's (status, body or message)."""
        self.assertEqual(header["type"], "batch-result")
        out = []
        for entry in header["results"]:
            if entry["status"] == "ok":
                out.append(("ok", body[entry["offset"]:entry["offset"] + entry["length"]]))
            else:
                out.append((entry["status"], entry.get("message")))
        return out

    def test_hello_declares_batches(self):
        w = self.start(program("batch.py"))
        fns = {f["name"]: f for f in w.hello()["functions"]}
        self.assertEqual((fns["pybatch"]["max_batch"], fns["pybatch"]["max_delay"]), (16, 0.05))
        self.assertEqual((fns["pywrong"]["max_batch"], fns["pywrong"]["max_delay"]), (4, 0.0))
        example = self.start(EXAMPLE)
        self.assertNotIn("max_batch", example.hello()["functions"][0])  # pyfib
        batch_id = self.batch(example, "pysum_batch", [{"a": 1, "b": 2}, {"a": -5, "b": 0}])
        header, body, _ = example.reply(batch_id)
        self.assertEqual(self.results(header, body), [("ok", b"3\n"), ("ok", b"-5\n")])
        self.assertEqual(w.close(), 0)

    def test_batch_with_one_bad_call(self):
        w = self.start(program("batch.py"))
        w.hello()
        batch_id = self.batch(w, "pybatch", [{"x": 1}, {"x": 13}, {"x": -7}])
        header, body, progress = w.reply(batch_id)
        self.assertEqual(self.results(header, body),
                         [("ok", b"1:3"), ("error", "ValueError: unlucky 13"), ("ok", b"-7:3")])
        self.assertNotIn("item", progress[0])  # for the whole batch
        self.assertEqual(sorted(p["item"] for p in progress[1:]), [0, 1, 2])  # then each call
        self.assertEqual(w.close(), 0)

    def test_raising_fails_every_call(self):
        w = self.start(program("batch.py"))
        w.hello()
        batch_id = self.batch(w, "pybatch", [{"x": 1}, {"x": 12}])
        header, body, _ = w.reply(batch_id)
        self.assertEqual(self.results(header, body),
                         [("error", "RuntimeError: 12 spoils the batch")] * 2)
        batch_id = self.batch(w, "pywrong", [{"x": 1}, {"x": 2}])
        header, body, _ = w.reply(batch_id)
        self.assertEqual(self.results(header, body),
                         [("error", "pywrong returned 1 results, not a list of 2 results")] * 2)
        self.assertEqual(w.close(), 0)

    def test_a_call_is_a_batch_of_one(self):
        w = self.start(program("batch.py"))
        w.hello()
        call_id = w.call("pybatch", {"x": 5})
        header, body, progress = w.reply(call_id)
        self.assertEqual((header, body), ({"type": "result", "id": call_id}, b"5:1"))
        self.assertTrue(all("item" not in p for p in progress))  # a call has no items
        call_id = w.call("pybatch", {"x": 13})
        header, body, _ = w.reply(call_id)
        self.assertEqual((header, body), ({"type": "error", "id": call_id,
                                           "message": "ValueError: unlucky 13"}, b""))
        self.assertEqual(w.close(), 0)

    def test_cancel_of_a_batch(self):
        w = self.start(program("batch.py"))
        w.hello()
        batch_id = self.batch(w, "pybatch", [{"x": 15}, {"x": 1}])
        time.sleep(0.2)
        start = time.monotonic()
        w.send({"type": "cancel", "id": batch_id})
        header, body, _ = w.reply(batch_id)
        self.assertEqual(self.results(header, body), [("cancelled", None)] * 2)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertEqual(w.close(), 0)

    def test_bad_batches_are_protocol_errors(self):
        cases = [
            ({"function": "pywrong", "calls": [{"args": {"x": 1}}] * 5},
             "batch of pywrong: \"calls\" must be a list of 1 to 4 calls"),
            ({"function": "pywrong", "calls": []},
             "batch of pywrong: \"calls\" must be a list of 1 to 4 calls"),
            ({"function": "pywrong", "calls": [7]}, "batch of pywrong: call 0 is not an object"),
            ({"function": "pywrong", "calls": [{"args": {"y": 1}}]},
             "batch of pywrong: call 0: arguments missing ['x'], unknown ['y']"),
            ({"function": "pywrong", "calls": [{}]}, 'batch of pywrong: call 0: no "args" object'),
            ({"function": "nope", "calls": []}, "batch of an undeclared function 'nope'"),
        ]
        for fields, message in cases:
            with self.subTest(message=message):
                w = self.start(program("batch.py"))
                w.hello()
                w.send(dict({"type": "batch", "id": 1}, **fields))
                self.assertEqual(w.proc.wait(TIMEOUT), 1)
                self.assertIn("protocol error from crunchd: " + message, w.errors())
        w = self.start(EXAMPLE)
        w.hello()
        w.send({"type": "batch", "id": 1, "function": "pyfib", "calls": [{"args": {"n": 1}}]})
        self.assertEqual(w.proc.wait(TIMEOUT), 1)
        self.assertIn("batch of pyfib, which takes no batches", w.errors())


class TestEndOfStream(WorkerTest):
    def test_eof_when_idle_exits_0(self):
        w = self.start(EXAMPLE)
        w.hello()
        self.assertEqual(w.close(), 0)

    def test_eof_before_reading_hello_exits_0(self):
        w = self.start(EXAMPLE)
        self.assertEqual(w.close(), 0)

    def test_eof_during_a_call_cancels_it_and_exits_0(self):
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pywait", {"seconds": 30})
        time.sleep(0.1)
        start = time.monotonic()
        self.assertEqual(w.close(), 0)
        self.assertLess(time.monotonic() - start, 2.0)  # 10 ms of work, on a loaded machine
        header, _ = w.recv()
        self.assertEqual(header, {"type": "cancelled", "id": call_id})


class TestProgramsForCrunchd(WorkerTest):
    """The programs the process executor's tests run under crunchd do what they say."""

    def test_crash_aborts_or_exits_on_chosen_arguments(self):
        w = self.start(program("crash.py"))
        w.hello()
        call_id = w.call("pycrash", {"n": 12})
        self.assertEqual(w.reply(call_id)[1], b"12\n")
        w.call("pycrash", {"n": 13})
        self.assertEqual(w.proc.wait(TIMEOUT), -signal.SIGABRT)
        w = self.start(program("crash.py"))
        w.hello()
        w.call("pycrash", {"n": 14})
        self.assertEqual(w.proc.wait(TIMEOUT), 3)

    def test_garbage_writes_into_the_stream(self):
        for kind, check in (("bytes", lambda data: data.startswith(b"this is not a frame")),
                            ("json", lambda data: data[:17] == b"\0\0\0\t\0\0\0\0{not json"),
                            ("wrong_id", lambda data: b'"id": 1001}stolen' in data)):
            with self.subTest(kind=kind):
                w = self.start(program("garbage.py"))
                w.hello()
                w.call("pygarbage", {"kind": kind})
                time.sleep(0.2)
                data = os.read(w.proc.stdout.fileno(), 65536)
                self.assertTrue(check(data), data)
                w.kill()


class TestSignals(WorkerTest):
    def test_sigint_is_ignored(self):
        """Ctrl-C on a crunchd in the foreground reaches its workers: they keep serving, and
        stop when crunchd closes their input."""
        w = self.start(program("argtypes.py"))
        w.hello()
        call_id = w.call("pywait", {"seconds": 0.5})
        time.sleep(0.1)
        w.proc.send_signal(signal.SIGINT)
        self.assertEqual(w.reply(call_id)[1], b"timed out\n")
        self.assertEqual(w.close(), 0)


class TestProtocolErrors(WorkerTest):
    """crunchd breaking the protocol: a message on stderr, exit 1, even during a call."""

    def broken(self, data, expected, path=EXAMPLE, during_call=False):
        w = self.start(path)
        w.hello()
        if during_call:
            w.call("pywait", {"seconds": 30})
        w.write(data)
        self.assertEqual(w.proc.wait(TIMEOUT), 1)
        self.assertIn("protocol error from crunchd: " + expected, w.errors())

    def test_header_length_zero(self):
        self.broken(struct.pack(">II", 0, 0), "header length 0 outside 1..1048576")

    def test_header_too_long(self):
        self.broken(struct.pack(">II", (1 << 20) + 1, 0), "header length 1048577")

    def test_payload_too_long(self):
        self.broken(struct.pack(">II", 2, (256 << 20) + 1) + b"{}", "payload length 268435457")

    def test_header_not_json(self):
        self.broken(frame(b"{nope"), "header is not UTF-8 JSON")

    def test_header_not_utf8(self):
        self.broken(frame(b'{"type":"\xff"}'), "header is not UTF-8 JSON")

    def test_header_not_an_object(self):
        self.broken(frame(b"[1]"), "header is not a JSON object")

    def test_header_without_type(self):
        self.broken(frame({"id": 1}), 'header has no string member "type"')

    def test_unknown_type(self):
        self.broken(frame({"type": "hello"}), "unknown message type 'hello'")

    def test_duplicate_member(self):
        self.broken(frame(b'{"type":"cancel","id":1,"id":2}'), "member 'id' appears twice")

    def test_truncated_frame(self):
        w = self.start(EXAMPLE)
        w.hello()
        w.write(frame({"type": "call"})[:12])
        self.assertEqual(w.close(), 1)
        self.assertIn("input ended inside a frame", w.errors())

    def test_call_of_an_undeclared_function(self):
        self.broken(frame({"type": "call", "id": 1, "function": "fib", "args": {}}),
                    "call of an undeclared function 'fib'")

    def test_call_with_a_missing_argument(self):
        self.broken(frame({"type": "call", "id": 1, "function": "pyfib", "args": {}}),
                    "call of pyfib: arguments missing ['n'], unknown []")

    def test_call_with_a_wrong_type(self):
        self.broken(frame({"type": "call", "id": 1, "function": "pyfib", "args": {"n": 1.5}}),
                    "call of pyfib: argument 'n' is not a 64-bit integer")

    def test_bytes_outside_the_payload(self):
        args = {"i": 1, "x": 1.0, "s": "", "b1": {"offset": 1, "length": 4},
                "b2": {"offset": 0, "length": 0}}
        self.broken(frame({"type": "call", "id": 1, "function": "pyargs", "args": args}, b"abcd"),
                    "call of pyargs: argument 'b1': 1+4 is outside the 4-byte payload",
                    path=program("argtypes.py"))

    def test_call_out_of_turn(self):
        self.broken(frame({"type": "call", "id": 2, "function": "pywait", "args": {"seconds": 1}}),
                    "call 2 while call 1 runs", path=program("argtypes.py"), during_call=True)

    def test_garbage_during_a_call_exits_at_once(self):
        self.broken(b"garbage garbage", "header length", path=program("argtypes.py"),
                    during_call=True)


class TestDeclarations(unittest.TestCase):
    """A bad declaration stops the program with a clear message, before any frame."""

    def run_program(self, source):
        env = dict(os.environ, CRUNCHD_WORKER_PROTOCOL="1", PYTHONPATH=PYTHONDIR)
        proc = subprocess.run([sys.executable, "-c", source], input=b"", capture_output=True,
                              env=env, timeout=TIMEOUT)
        return proc

    def check(self, declaration, message):
        source = ("from crunchd import Arg, function, serve\n"
                  f"@function({declaration})\n"
                  "def f(n=0, s='', b=b''):\n    return ''\n"
                  "serve()\n")
        proc = self.run_program(source)
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stdout, b"", "nothing may reach the stream")
        self.assertIn("crunchd.DeclarationError: " + message, proc.stderr.decode())

    def test_bad_declarations(self):
        cases = [
            ("name='Fib'", "function 'Fib': a name must match [a-z0-9_]+ (at most 64); pass name=..."),
            ("name='x' * 65", "function '" + "x" * 65 + "': a name must match [a-z0-9_]+"),
            ("args=[Arg('N', int, min=0, max=1)]", "argument 'N': a name must match [a-z0-9_]+"),
            ("args=[Arg('n', list, min=0, max=1)]",
             "argument 'n': type must be int, float, str or bytes, not <class 'list'>"),
            ("args=[Arg('n', int, max=1)]", "argument 'n': min is required for type int"),
            ("args=[Arg('s', str)]", "argument 's': max is required for type str"),
            ("args=[Arg('n', float, min=0, max=float('inf'))]",
             "argument 'n': max must be a finite number, got inf"),
            ("args=[Arg('n', int, min=2, max=1)]", "argument 'n': min (2) is above max (1)"),
            ("args=[Arg('s', str, min=-1, max=1)]", "argument 's': a length bound cannot be negative"),
            ("args=[Arg('n', int, min=0, max=9, default=10)]",
             "argument 'n': default (10) is outside [0, 9]"),
            ("args=[Arg('n', int, min=0, max=9, default='1')]", "argument 'n': default must be int, not str"),
            ("args=[Arg('n', int, min=0, max=9, default=True)]", "argument 'n': default must be int, not bool"),
            ("args=[Arg('s', str, max=3, default='four')]",
             "argument 's': default (4 characters long) is outside [0, 3]"),
            ("args=[Arg('b', bytes, max=1, default=b'ab')]",
             "argument 'b': default (2 bytes long) is outside [0, 1]"),
            ("args=[Arg('n', int, min=0, max=9), Arg('n', int, min=0, max=9)]",
             "function 'f': argument 'n' declared twice"),
            ("args=[Arg('x', int, min=0, max=9)]",
             "function 'f': cannot be called with its declared arguments (x) as keywords"),
            ("args=['n']", "function 'f': args must be Arg(...), not str"),
            ("deadline=0", "function 'f': deadline must be in (0, 86400] seconds, got 0"),
            ("deadline=86401", "function 'f': deadline must be in (0, 86400] seconds, got 86401"),
            ("pure=1", "function 'f': pure must be True or False"),
            ("content_type=''", "function 'f': content_type must be a non-empty str"),
            ("content_type='text/plain\\r\\nX: y'",
             "function 'f': content_type must be one line without control characters"),
            ("description='two\\nlines'", "function 'f': description must be one line"),
            ("content_type='text/plain; x=\u00e9'", "function 'f': content_type must be ASCII"),
            ("batch=0", "function 'f': batch must be None or an int in 1..1024, got 0"),
            ("batch=1025", "function 'f': batch must be None or an int in 1..1024, got 1025"),
            ("batch=True", "function 'f': batch must be None or an int in 1..1024, got True"),
            ("batch=8, max_delay=2", "function 'f': max_delay must be in [0, 1] seconds, got 2"),
            ("max_delay=0.01", "function 'f': max_delay needs batch=N"),
        ]
        for declaration, message in cases:
            with self.subTest(declaration=declaration):
                self.check(declaration, message)

    def test_declared_twice(self):
        proc = self.run_program("from crunchd import function, serve\n"
                                "@function()\ndef f(): return ''\n"
                                "@function(name='f')\ndef g(): return ''\n")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("crunchd.DeclarationError: function 'f': declared twice", proc.stderr.decode())

    def test_no_functions(self):
        proc = self.run_program("import crunchd\ncrunchd.serve()\n")
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stdout, b"")
        self.assertIn("crunchd.DeclarationError: program '-c': no functions declared", proc.stderr.decode())

    def test_functions_run_outside_crunchd(self):
        """A decorated function is the function itself: callable in a unit test, where
        cancelled() is False and progress() does nothing."""
        proc = subprocess.run(
            [sys.executable, "-c",
             "import crunchd\n"
             "@crunchd.function(args=[crunchd.Arg('n', int, min=0, max=9)])\n"
             "def f(n):\n    crunchd.progress(0.5)\n    return str(n) + str(crunchd.cancelled())\n"
             "print(f(3))\n"],
            capture_output=True, env=dict(os.environ, PYTHONPATH=PYTHONDIR), timeout=TIMEOUT)
        self.assertEqual((proc.returncode, proc.stdout, proc.stderr), (0, b"3False\n", b""))


class TestReadme(WorkerTest):
    def test_numpy_example(self):
        """README's Python example, as printed but for where its weights are: the model's
        answers, its progress, and a bad length answered with the ValueError."""
        try:
            import numpy as np
        except ImportError:
            self.skipTest("numpy is not installed for this Python")
        with open(os.path.join(SRCDIR, "README"), encoding="utf-8") as f:
            text = f.read()
        source = text.split("\n```python\n", 1)[1].split("\n```\n", 1)[0] + "\n"
        tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(tmp, n)) for n in os.listdir(tmp)]
                        and os.rmdir(tmp))
        rng = np.random.default_rng(1)
        W, b = rng.normal(size=64).astype("<f4"), np.float32(0.5)
        np.savez(os.path.join(tmp, "churn.npz"), W=W, b=b)
        path = os.path.join(tmp, "churn.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace("/srv/models/churn.npz", os.path.join(tmp, "churn.npz")))
        w = self.start(path)
        self.assertEqual([f["name"] for f in w.hello()["functions"]], ["churn"])
        x = rng.normal(size=(3000, 64)).astype("<f4")
        call_id = w.call("churn", {"rows": {"offset": 0, "length": x.nbytes}}, x.tobytes())
        header, body, progress = w.reply(call_id)
        self.assertEqual(header["type"], "result")
        self.assertTrue(np.allclose(np.frombuffer(body, "<f4"), 1 / (1 + np.exp(-(x @ W + b))),
                                    atol=1e-6))
        self.assertEqual(progress[0]["message"], "row 0 of 3000")
        call_id = w.call("churn", {"rows": {"offset": 0, "length": 300}}, bytes(300))
        self.assertEqual(w.reply(call_id)[0]["message"],
                         "ValueError: cannot reshape array of size 75 into shape (64)")
        self.assertEqual(w.close(), 0)


class TapResult(unittest.TextTestResult):
    """One TAP line per test; a failing subtest fails its test."""

    def __init__(self, stream, descriptions, verbosity):
        super().__init__(stream, descriptions, 0)
        self.count = 0
        self.problems = []

    def startTest(self, test):
        super().startTest(test)
        self.problems = []

    def stopTest(self, test):
        super().stopTest(test)
        self.count += 1
        name = f"{type(test).__name__}.{test._testMethodName}"
        skip = "".join(f" # SKIP {reason}" for t, reason in self.skipped if t is test)
        print(f"{'not ok' if self.problems else 'ok'} {self.count} - {name}{skip}", flush=True)
        for text in self.problems:
            print("# " + text.rstrip("\n").replace("\n", "\n# "), flush=True)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.problems.append(f"{subtest.id()}\n{self._exc_info_to_string(err, test)}")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.problems.append(self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self.problems.append(self._exc_info_to_string(err, test))


def main():
    if "--verbose" in sys.argv:
        unittest.main(argv=[sys.argv[0], "-v"])
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    print(f"1..{suite.countTestCases()}", flush=True)
    result = unittest.TextTestRunner(stream=open(os.devnull, "w"), resultclass=TapResult).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
