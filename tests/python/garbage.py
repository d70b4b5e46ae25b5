#!/usr/bin/env python3
"""A worker that breaks the protocol on purpose, on the real stdout (the module's private
handle on it: print() cannot reach it). pygarbage(kind):
  bytes    - bytes that are not a frame
  json     - a frame whose header is not JSON
  wrong_id - a well-formed result for a call it was not given (id + 1000), then its own result
crunchd must kill this process and fail only the job it was running."""
import json
import os
import struct

import crunchd
from crunchd import Arg, function, serve


def _frame(header, payload=b""):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">II", len(head), len(payload)) + head + payload


@function(args=[Arg("kind", str, max=20, default="bytes")], deadline=10)
def pygarbage(kind):
    """Writes garbage into the protocol stream."""
    out = crunchd._out_fd  # the protocol stream itself, for this test only
    if kind == "bytes":
        os.write(out, b"this is not a frame\n" * 8)
    elif kind == "json":
        os.write(out, _frame(b"{not json"))
    elif kind == "wrong_id":
        os.write(out, _frame({"type": "result", "id": crunchd._current.id + 1000}, b"stolen"))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return "garbage sent\n"


serve(version="1.0")
