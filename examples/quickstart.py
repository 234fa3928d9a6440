"""A first tour of `pool`: results, a map, a remote traceback, a worker killed.

Run it with:  python examples/quickstart.py
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import traceback

from pool import Pool, WorkerLost


def digest(n: int) -> str:
    """Some real work: hash n kilobytes of generated data."""
    data = bytes(i % 251 for i in range(1024)) * n
    return hashlib.sha256(data).hexdigest()[:12]


def parse_price(text: str) -> float:
    return float(text.strip("$"))


def crash_hard() -> None:
    """Die the way a segfault or the OOM killer would: no exception, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    with Pool(max_workers=2) as pool:
        # 1. submit: futures, as with concurrent.futures.
        futures = {n: pool.submit(digest, n) for n in (1, 10, 100)}
        for n, future in futures.items():
            print(f"sha256 of {n:>3} KiB: {future.result()}")

        # 2. map: chunked automatically, results in input order.
        squares = list(pool.map(lambda x: x * x, range(10_000)))
        print(f"map over 10,000 items: sum of squares = {sum(squares)}")

        # 3. a task that raises: the original exception, with the worker's frames.
        try:
            pool.submit(parse_price, "$12,50").result()
        except ValueError:
            print("\na task raised; its remote traceback:")
            traceback.print_exc(file=sys.stdout)

        # 4. a worker that dies: only its task fails; the pool carries on.
        try:
            pool.submit(crash_hard).result()
        except WorkerLost as error:
            print(f"\nWorkerLost: {error}")
        print(f"after the crash: {pool.submit(parse_price, '$19.99').result()} (the pool carries on)")


if __name__ == "__main__":
    main()
