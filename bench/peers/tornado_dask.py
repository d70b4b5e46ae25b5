#!/usr/bin/env python3
"""tornado_dask.py - the program crunchd replaces, for bench/peers/run.

The web server of the dask-examples notebook "Asynchronous Computation: Web Servers + Dask"
(applications/async-web-server.ipynb): Tornado answers /fast inline and hands /fib/N, a naive
recursive Fibonacci, to a dask.distributed LocalCluster with `await client.submit(fib, n)`.
Added for the benchmark: the choice of pure=True (Dask's default, what the notebook ran) or
pure=False, a fixed number of worker processes with one thread each (crunchd runs one worker
thread per core), /submit (the notebook's trivial round trip, `submit(lambda x: x + 1, 10)`,
behind HTTP like crunchd's /fib/1), 127.0.0.1 only, a ready line, and a clean stop on SIGTERM.

    tornado_dask.py [--port 0] [--pure | --impure] [--workers CORES]

Prints "tornado_dask: listening on http://127.0.0.1:PORT/ ..." on stdout once the cluster's
workers are up and the socket listens. SIGTERM or SIGINT closes the client and the cluster
(which stops its worker processes) and exits 0.
"""
import argparse
import asyncio
import os
import signal
import sys

import tornado.httpserver
import tornado.netutil
import tornado.web
from dask.distributed import Client, LocalCluster


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def inc(x):
    return x + 1


class FastHandler(tornado.web.RequestHandler):
    def get(self):
        self.write("Hello!")


class FibHandler(tornado.web.RequestHandler):
    async def get(self, n):
        app = self.application.settings
        result = await app["dask"].submit(fib, int(n), pure=app["pure"])
        self.write(str(result))


class SubmitHandler(tornado.web.RequestHandler):
    async def get(self):
        app = self.application.settings
        result = await app["dask"].submit(inc, 10, pure=app["pure"])
        self.write(str(result))


async def serve(args):
    # processes, one thread each: Python's GIL would serialize threads running fib
    cluster = await LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None, asynchronous=True)
    client = await Client(cluster, asynchronous=True)
    app = tornado.web.Application([
        (r"/fast", FastHandler),
        (r"/fib/(\d+)", FibHandler),
        (r"/submit", SubmitHandler),
    ], dask=client, pure=args.pure)
    sockets = tornado.netutil.bind_sockets(args.port, address="127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = sockets[0].getsockname()[1]
    print(f"tornado_dask: listening on http://127.0.0.1:{port}/ (pure={args.pure}, "
          f"{args.workers} dask worker processes x 1 thread, pid {os.getpid()})", flush=True)
    await stop.wait()
    server.stop()
    await client.close()
    await cluster.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pure", dest="pure", action="store_true", default=True,
                   help="client.submit(..., pure=True): identical calls share one key (default)")
    g.add_argument("--impure", dest="pure", action="store_false",
                   help="client.submit(..., pure=False): every call is its own task")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="dask worker processes, one thread each (default: the cores)")
    args = p.parse_args()
    if args.workers < 1:
        p.error("--workers must be at least 1")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
