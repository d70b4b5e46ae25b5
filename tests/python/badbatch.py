#!/usr/bin/env python3
"""A worker that breaks the protocol in its batch replies, written against the protocol directly
(struct + json only). pbad(x) declares batches of up to 4; the first call's x chooses how the
batch is answered: 0 well, 1 with one result too few, 2 with a result outside the payload, 3 with
a progress frame for a call outside the batch, 4 with a "result" frame instead of a batch-result,
5 with a batch-result for another id. crunchd must kill it and fail every call of the batch."""
import json
import struct
import sys

out, inp = sys.stdout.buffer, sys.stdin.buffer


def send(header, payload=b""):
    head = json.dumps(header).encode()
    out.write(struct.pack(">II", len(head), len(payload)) + head + payload)
    out.flush()


send({"type": "hello", "protocol": 1, "name": "badbatch", "version": "1",
      "functions": [{"name": "pbad", "description": "bad batch replies", "pure": False,
                     "deadline": 5, "content_type": "text/plain", "max_batch": 4,
                     "max_delay": 0.01,
                     "args": [{"name": "x", "type": "int", "min": 0, "max": 9, "default": None}]}]})
while True:
    prefix = inp.read(8)
    if len(prefix) < 8:
        sys.exit(0)
    hlen, plen = struct.unpack(">II", prefix)
    header, payload = json.loads(inp.read(hlen)), inp.read(plen)
    kind, i = header["type"], header["id"]
    if kind == "cancel":
        continue
    calls = header["calls"] if kind == "batch" else [{"args": header["args"]}]
    n, mode = len(calls), calls[0]["args"]["x"]
    body = b"".join(b"%d" % c["args"]["x"] for c in calls)
    results = [{"status": "ok", "offset": k, "length": 1} for k in range(n)]
    if mode == 1:
        results = results[:-1]
    elif mode == 2:
        results[-1]["length"] = 2
    elif mode == 3:
        send({"type": "progress", "id": i, "fraction": 0.5, "item": n})
    if mode == 4 or kind == "call":
        send({"type": "result", "id": i}, body[:1])
    else:
        send({"type": "batch-result", "id": i + 1 if mode == 5 else i, "results": results}, body)
