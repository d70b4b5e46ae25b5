#!/usr/bin/env python3
"""A worker that allocates without bound: pyhog(step_mb) keeps allocating (and touching)
blocks of step_mb MiB until the allocation fails. Under crunchd's [executor] memory_limit that
is a MemoryError, answered as an error with "kind":"memory"; without a limit it takes the
machine's memory: never run it without one."""
from crunchd import Arg, function, serve


@function(args=[Arg("step_mb", int, min=1, max=1024, default=16)], deadline=60)
def pyhog(step_mb):
    """Allocates until it fails."""
    blocks = []
    while True:
        blocks.append(bytearray(step_mb << 20))  # zero-filled: every page touched


serve(version="1.0")
