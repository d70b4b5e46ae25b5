#!/usr/bin/env python3
# proto-test.py - a program plugin written directly against the worker protocol (struct + json
# only), for tests/test-procs.c. Its behaviour is chosen by its file name (symlinks in the test):
# "proto-test" declares good functions; "proto-bad" declares min > max; "proto-silent" never
# says hello; "proto-slowexit" takes 1.5 s to exit once its stdin is closed; "proto-slowstart"
# takes 20 s to say hello, but for its first process. A file "extra" beside it adds a function
# (a program that changed under crunchd).
import json, os, struct, sys, time

out = sys.stdout.buffer
inp = sys.stdin.buffer
mode = os.path.basename(sys.argv[0]).split(".")[0]


def send(header, payload=b""):
    h = json.dumps(header).encode()
    out.write(struct.pack(">II", len(h), len(payload)) + h + payload)
    out.flush()


def read():
    prefix = inp.read(8)
    if len(prefix) < 8:
        return None, None
    h, p = struct.unpack(">II", prefix)
    return json.loads(inp.read(h)), inp.read(p)


def fn(name, args=(), pure=False, deadline=5.0):
    return {"name": name, "description": name, "pure": pure, "deadline": deadline,
            "content_type": "application/octet-stream", "args": list(args)}


if mode == "proto-silent":
    time.sleep(60)
    sys.exit(0)
n_arg = {"name": "n", "type": "int", "min": 5 if mode == "proto-bad" else 0, "max": 1}
functions = [
    fn("pecho", [{"name": "s", "type": "string", "min": 0, "max": 16, "default": "hi"},
                 {"name": "b", "type": "bytes", "min": 0, "max": 16, "default": "AAE="},
                 {"name": "x", "type": "float", "min": -1, "max": 1, "default": "0.5"}], pure=True),
    fn("pgarbage"), fn("pwrongid"), fn("pmemory"), fn("pprogress"), fn("pid"),
    fn("pbits", [n_arg]), fn("psleep", deadline=0.3), fn("pdeadline"), fn("porphan"),
    fn("pnoisy"), fn("porphan_reply"), fn("plate"),
]
if os.path.exists(os.path.join(os.path.dirname(sys.argv[0]), "extra")):
    functions.append(fn("pextra"))  # a later process that declares more than the first one
if mode == "proto-slowstart":  # its first process starts at once, later ones take 20 s
    once = os.path.join(os.path.dirname(sys.argv[0]), "slowstart.once")
    if os.path.exists(once):
        time.sleep(20)
    open(once, "w").close()
send({"type": "hello", "protocol": 1, "name": mode, "version": "1.0", "functions": functions})
print("proto-test started", file=sys.stderr, flush=True)
pending = None  # a call read ahead (plate)
while True:
    call, payload = pending if pending else read()
    pending = None
    if call is None:
        if mode == "proto-slowexit":
            time.sleep(1.5)  # a model that takes its time to unload
        sys.exit(0)
    if call["type"] == "cancel":
        continue
    i, f, a = call["id"], call["function"], call["args"]
    if f == "pecho":
        b = payload[a["b"]["offset"]:a["b"]["offset"] + a["b"]["length"]]
        send({"type": "result", "id": i}, ("%s %s %g " % (a["s"], b.hex(), a["x"])).encode() + b)
    elif f == "pgarbage":
        out.write(b"this is not a frame at all")
        out.flush()
    elif f == "pwrongid":
        send({"type": "result", "id": i + 1000})
    elif f == "pmemory":
        send({"type": "error", "id": i, "message": "MemoryError", "kind": "memory"})
    elif f == "pprogress":
        send({"type": "progress", "id": i, "fraction": 0.5})
        send({"type": "result", "id": i}, b"done")
    elif f == "pid":
        send({"type": "result", "id": i}, str(os.getpid()).encode())
    elif f == "pdeadline":
        send({"type": "result", "id": i}, ("%.3f" % call["deadline"]).encode())
    elif f == "pnoisy":  # floods its stderr, then says one line more after a pause
        for n in range(3000):
            print("noise %d" % n, file=sys.stderr)
        sys.stderr.flush()
        time.sleep(0.1)
        print("after the noise", file=sys.stderr, flush=True)
        send({"type": "result", "id": i}, b"noisy")
    elif f == "porphan_reply":  # answers, then dies while a process it started holds stdout
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        send({"type": "result", "id": i}, b"answered")
        os._exit(0)
    elif f == "porphan":  # dies while a process it started keeps its stdout open
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        with open(os.path.join(os.path.dirname(sys.argv[0]), "orphan.pid"), "w") as f:
            f.write(str(child))
        os._exit(0)
    elif f == "plate":  # answers, then (too late: its next call has come) reports progress
        send({"type": "result", "id": i}, b"first")  # and answers again
        pending = read()
        send({"type": "progress", "id": i, "fraction": 0.9})
        send({"type": "result", "id": i}, b"second")
    elif f == "psleep":
        time.sleep(30)  # never looks at cancel: crunchd kills it
    else:
        send({"type": "error", "id": i, "message": "n must be odd"})
