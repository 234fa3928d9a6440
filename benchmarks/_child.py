"""One measurement in a process of its own: ``python -m benchmarks._child SPEC``.

SPEC is JSON: ``{"library": ..., "workload": ..., "settings": {...}}``; the
library may be "floor" for a workload that has one. The result is printed
as one line of JSON on stdout (`Measured.to_json`). Anything else written to
stdout, by the library or its workers, goes to stderr instead.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks._libraries import LIBRARIES
from benchmarks._settings import Settings
from benchmarks._workloads import WORKLOADS, Measured

FLOOR = "floor"


def measure(library: str, workload_name: str, settings: Settings) -> Measured:
    workload = WORKLOADS[workload_name]
    if library == FLOOR:
        if workload.floor is None:
            raise ValueError(f"{workload_name} has no floor")
        return workload.floor(settings)
    return workload.measure(LIBRARIES[library](), settings)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    result_fd = os.dup(sys.stdout.fileno())
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # inherited by forked workers too
    measured = measure(spec["library"], spec["workload"], Settings.from_json(spec["settings"]))
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(measured.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
