#!/usr/bin/env python3
"""Batch functions for the tests. pybatch(x) answers "x:n" for each call, n being the size of
the batch it came in (so a test sees how calls were grouped); x = 13 fails that call alone, 12
fails the whole batch (the function raises), 14 crashes the process (os.abort()), 15 waits up to
5 s for a cancel, and x >= 100 makes the run take x ms first (a call that keeps the process busy
while others queue up). It reports progress for the whole batch, then for each call. pywrong returns
one result too few."""
import os
import time

import crunchd
from crunchd import Arg, function, serve


@function(args=[Arg("x", int, min=-1000, max=1000)], batch=16, max_delay=0.05, deadline=10)
def pybatch(x):
    """Each call's x and the size of its batch."""
    crunchd.progress(0.0, "started")
    time.sleep(max(x) / 1000 if max(x) >= 100 else 0)
    if 14 in x:
        os.abort()
    if 12 in x:
        raise RuntimeError("12 spoils the batch")
    if 15 in x:
        until = time.monotonic() + 5
        while not crunchd.cancelled() and time.monotonic() < until:
            time.sleep(0.01)
    for i in range(len(x)):
        crunchd.progress(0.5, f"call {i}", item=i)
    time.sleep(0.02)  # the fixed cost of a run
    return [ValueError("unlucky 13") if v == 13 else f"{v}:{len(x)}" for v in x]


@function(args=[Arg("x", int, min=0, max=10)], batch=4)
def pywrong(x):
    """One result too few."""
    return ["a"] * (len(x) - 1)


serve(version="1.0")
