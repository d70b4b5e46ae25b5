#!/usr/bin/env python3
"""A worker that dies on a chosen argument: pycrash(n) calls os.abort() (SIGABRT) when n is 13,
os._exit(3) without answering when n is 14, answers and then exits while idle when n is 15, raises
ValueError with a NUL in its message when n is 16, and otherwise answers str(n). crunchd must fail only that call (502 naming the signal or status) and
respawn the process; a process that died while idle must not hurt the next call (nor crunchd:
writing to its pipe raised SIGPIPE)."""
import os
import threading

from crunchd import Arg, function, serve


@function(args=[Arg("n", int, min=-1000, max=1000)], deadline=10)
def pycrash(n):
    """Aborts on 13, exits on 14."""
    if n == 13:
        os.abort()
    if n == 14:
        os._exit(3)
    if n == 15:
        threading.Timer(0.05, os._exit, args=(0,)).start()  # after the answer is out
    if n == 16:
        raise ValueError("bad\x00value")  # a NUL in a message: a 500, not a protocol error
    return f"{n}\n"


serve(version="1.0")
