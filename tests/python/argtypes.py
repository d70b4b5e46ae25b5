#!/usr/bin/env python3
"""A worker for tests/test-python.py: every argument type, errors, results of the wrong type,
print() from a function and from module-level code."""
import array
import json
import os
import subprocess
import sys

import crunchd
from crunchd import Arg, function, serve

print("loading the model: module-level output goes to stderr")  # before hello


@function(args=[Arg("i", int, min=-(1 << 62), max=1 << 62),
                Arg("x", float, min=-1e300, max=1e300),
                Arg("s", str, max=100),
                Arg("b1", bytes, max=1 << 20),
                Arg("b2", bytes, max=1 << 20, default=b"\x00\xff")],
          pure=True, deadline=5, content_type="application/json", description="echoes its arguments")
def pyargs(i, x, s, b1, b2):
    return json.dumps({"i": i, "x": x, "s": s, "b1": b1.hex(), "b2": b2.hex()})


@function(args=[Arg("blob", bytes, max=64 << 20)], pure=True, deadline=30,
          content_type="application/octet-stream")
def pyreverse(blob):
    """Returns blob reversed (large frames both ways)."""
    return blob[::-1]


@function(args=[Arg("message", str, max=1000)], deadline=5)
def pyfail(message):
    """Raises ValueError(message); "surrogate": one naming an undecodable file name."""
    if message == "surrogate":
        raise ValueError("cannot parse " + b"\xff.csv".decode("utf-8", "surrogateescape"))
    raise ValueError(message)


@function(args=[Arg("kind", str, max=20)], deadline=5, content_type="application/octet-stream")
def pyreturn(kind):
    """Returns a value of the kind asked for."""
    return {"int": 42, "none": None, "bytes": b"\x00\x01\xfe\xff", "bytearray": bytearray(b"ba"),
            "memoryview": memoryview(array.array("i", [1, -1])),
            "str": "h\u00e9llo \u2603", "surrogate": "\ud800"}[kind]


@function(deadline=5)
def pyprint():
    """Writes to stdout every way a function might."""
    print("print() from a function")
    sys.stdout.write("sys.stdout.write\n")
    sys.stdout.flush()
    os.write(1, b"os.write(1)\n")
    subprocess.run(["echo", "a child process's stdout"], check=True)
    return "printed\n"


@function(deadline=5)
def pymemory():
    """Raises MemoryError."""
    raise MemoryError


@function(args=[Arg("steps", int, min=1, max=1000)], deadline=60)
def pyprogress(steps):
    """Reports progress on every step, 10 ms apart: the module sends at most 5 a second."""
    import time
    for k in range(steps):
        crunchd.progress(k / steps, f"step {k}")
        time.sleep(0.01)
    return f"{steps} steps\n"


@function(args=[Arg("seconds", float, min=0, max=60)], deadline=60)
def pywait(seconds):
    """Waits for cancel (checking every 10 ms) up to `seconds`, then answers how it ended."""
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if crunchd.cancelled():
            return "saw cancel\n"
        time.sleep(0.01)
    return "timed out\n"


serve(name="argtypes", version="2.5")
