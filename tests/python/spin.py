#!/usr/bin/env python3
"""A worker whose function ignores cancellation: pyspin burns the CPU for `seconds` and never
looks at crunchd.cancelled(). crunchd must kill it after [executor] kill_grace. Also pyecho,
which answers at once (shows that a fresh process serves after the kill)."""
import time

from crunchd import Arg, function, serve


@function(args=[Arg("seconds", float, min=0, max=86400, default=3600)], deadline=86400)
def pyspin(seconds):
    """Spins, ignoring cancel."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun\n"


@function(args=[Arg("s", str, max=1000, default="")], pure=True, deadline=10)
def pyecho(s):
    """Returns s."""
    return s


serve(version="1.0")
