"""Sizes and repetitions of a run: the full preset, the `--quick` one, calibration."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from benchmarks._tasks import spin


@dataclass(frozen=True)
class Settings:
    """Everything a measurement needs to know, sent to each child as JSON."""

    workers: int
    repeat: int  # repetitions of each measurement; the figure is their median
    round_trips: int  # tasks per repetition of the round-trip workload
    submitted: int  # tasks per repetition of the submit-then-await workload
    map_items: int  # items per `map`, unless a library's default would not fit map_budget
    map_budget: float  # seconds a library's `map` repetitions may take together
    cpu_tasks: int
    cpu_task_seconds: float
    spin_iterations: int  # iterations of `spin` taking cpu_task_seconds here (calibrated)
    payload_bytes: int
    starts: int  # fresh processes for the start-up workload, one pool each
    floor_chunk: int  # items per message of the hand-written map floor

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(**data)


FULL = Settings(
    workers=2,
    repeat=5,
    round_trips=2_000,
    submitted=20_000,
    map_items=1_000_000,
    map_budget=20.0,
    cpu_tasks=40,
    cpu_task_seconds=0.050,
    spin_iterations=0,
    payload_bytes=64 * 2**20,
    starts=7,
    floor_chunk=1_000,
)

QUICK = dataclasses.replace(
    FULL,
    repeat=2,
    round_trips=300,
    submitted=2_000,
    map_items=100_000,
    map_budget=1.0,
    cpu_tasks=8,
    starts=2,
)

DEFAULT_TIMEOUT = {False: 60.0, True: 15.0}  # seconds per child process, by --quick


def calibrate(settings: Settings) -> Settings:
    """Settings whose `spin_iterations` take `cpu_task_seconds` on this machine now."""
    probe = 200_000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        spin(probe)
        best = min(best, time.perf_counter() - start)
    iterations = round(probe * settings.cpu_task_seconds / best)
    return dataclasses.replace(settings, spin_iterations=iterations)
