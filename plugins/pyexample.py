#!/usr/bin/env python3
"""pyexample - three compute functions in Python, served by crunchd as a program plugin.

    [plugins]
    load = pyexample.py

crunchd runs this file as worker processes speaking crunchd-worker-protocol(7) through the
crunchd module (python/crunchd.py), then serves:

    curl '127.0.0.1:8000/fn/pyfib?n=25'          naive recursive Fibonacci, as the built-in fib
    curl '127.0.0.1:8000/fn/pyprimes?n=2000000'  counts primes below n, reporting progress
    curl '127.0.0.1:8000/fn/pysum_batch?a=1&b=2' a + b, computed in batches of up to 64 calls
"""
import time

import crunchd
from crunchd import Arg, function, serve


class _Stop(Exception):
    pass


def _fib(n):
    if n < 2:
        return n
    # a call with n >= 20 costs milliseconds: checking the flag there is cheap and often enough
    if n >= 20 and crunchd.cancelled():
        raise _Stop
    return _fib(n - 1) + _fib(n - 2)


@function(args=[Arg("n", int, min=0, max=90, default=10, description="which Fibonacci number")],
          pure=True, deadline=10, content_type="text/plain; charset=utf-8")
def pyfib(n):
    """The n-th Fibonacci number, computed the slow way (naive recursion), in Python."""
    try:
        return f"{_fib(n)}\n"
    except _Stop:
        return None  # answered "cancelled" whatever is returned


@function(args=[Arg("n", int, min=2, max=100_000_000, description="count the primes below n")],
          pure=True, deadline=60, content_type="text/plain; charset=utf-8")
def pyprimes(n):
    """How many primes are below n (trial division), with progress reports."""
    count = 0
    for k in range(2, n):
        if k % 4096 == 0:
            if crunchd.cancelled():
                return None
            crunchd.progress(k / n, f"{k} of {n}")  # the module sends at most 5 a second
        d = 2
        while d * d <= k and k % d:
            d += 1
        count += d * d > k
    return f"{count}\n"


@function(args=[Arg("a", int, min=-1_000_000, max=1_000_000, description="a number"),
                Arg("b", int, min=-1_000_000, max=1_000_000, default=0, description="another")],
          pure=True, deadline=10, content_type="text/plain; charset=utf-8",
          batch=64, max_delay=0.005)
def pysum_batch(a, b):
    """a + b, in batches: 20 ms per run plus 0.1 ms per call, the cost shape of a model."""
    time.sleep(0.020 + 0.0001 * len(a))  # one "forward pass" for the whole batch
    return [f"{x + y}\n" for x, y in zip(a, b)]


if __name__ == "__main__":
    serve(version="1.0")
