"""max_tasks_per_child: workers leave by the sentinel and are replaced; nothing lost."""

from __future__ import annotations

from collections import Counter

import pytest
from _tasks import getpid, square

from pool import Pool


@pytest.mark.parametrize("limit", [1, 3])
def test_workers_are_replaced_after_max_tasks(limit: int) -> None:
    with Pool(2, max_tasks_per_child=limit) as p:
        pids = [f.result(timeout=60) for f in [p.submit(getpid) for _ in range(20)]]
        per_worker = Counter(pids)
        assert max(per_worker.values()) <= limit
        assert len(per_worker) >= 20 // limit
        assert list(p.map(square, range(30), chunksize=2)) == [i * i for i in range(30)]


def test_invalid_max_tasks_per_child() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        Pool(1, max_tasks_per_child=0)
    with pytest.raises(TypeError, match="max_tasks_per_child"):
        Pool(1, max_tasks_per_child="3")  # type: ignore[arg-type]
