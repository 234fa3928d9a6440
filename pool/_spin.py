"""Waiting for a pipe without sleeping, for a short while, when the answer is due soon.

A thread that sleeps in ``poll`` and is woken by the other process's write
pays for both ends of the wake-up: the writer's kernel sends an interrupt to
the sleeper's CPU, the sleeper's CPU comes out of idle and switches to it.
On a virtual machine that is tens of microseconds each way, more than a
tiny task's whole work: 20,000 round trips of one took 105-120 µs each with
both ends sleeping, 62-70 µs with the caller polling without sleeping, and
40-49 µs with the worker doing so too, against 50-55 µs for two processes
that sleep in ``read`` on one Pipe.

So both ends of a round trip that is due soon poll without sleeping first,
for at most SPIN seconds, then sleep as before:

- a caller's thread reading its task's reply itself (`pool._direct`);
- the worker that replied, waiting for that caller's next task, when the
  last reply was read that way (a script's loop of ``submit(...).result()``;
  not replies that go to callbacks, an event loop or ``as_completed``).

Only for a call of a function whose calls took under SPIN seconds, from
send to reply, sent straight to an idle worker, and only when the pool's
own count leaves a CPU for each (the caller and the worker, besides the
workers busy with other tasks); it does not see other processes. A call
that runs long this time, or a next task that does not come, costs up to
SPIN seconds of CPU, each time.
"""

from __future__ import annotations

import select
import time

__all__ = ["SPIN", "spin"]

SPIN = 200e-6


def spin(poller: select.poll, seconds: float) -> list[tuple[int, int]]:
    """Poll without sleeping for up to ``seconds``: the descriptors ready, or none."""
    end = time.monotonic() + seconds
    while True:
        ready = poller.poll(0)
        if ready or time.monotonic() >= end:
            return ready
