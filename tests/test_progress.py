"""Progress bars: the same results with or without, and a bar on standard error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _stages import double

from pool import Pipeline, Pool
from pool._progress import BatchProgress


def test_a_pipeline_with_a_progress_bar_yields_the_same_items(capfd: pytest.CaptureFixture[str]) -> None:
    assert list(Pipeline(range(500), progress=True).map(double)) == [2 * x for x in range(500)]
    assert "500/500" in capfd.readouterr().err


@pytest.mark.parametrize("call", ["map", "imap", "imap_unordered"])
def test_map_with_a_progress_bar_yields_the_same_results(
    call: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with Pool(2) as p:
        results = list(getattr(p, call)(double, range(300), progress=True))
    assert sorted(results) == [2 * x for x in range(300)]
    assert "300/300" in capfd.readouterr().err


def test_map_progress_must_be_a_bool() -> None:
    with Pool(1) as p, pytest.raises(TypeError, match="progress must be True or False"):
        p.map(double, [1], progress="yes")  # type: ignore[call-overload]


def test_plain_progress_lines_count_rate_and_eta() -> None:
    class Sink:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    sink = Sink()
    progress = BatchProgress(total=1000, stream=sink, interval=0)  # type: ignore[arg-type]
    progress.committed(250, 3)
    line = sink.text.strip()
    assert line.startswith("250/1,000 inputs, 3 failed, ") and "/s" in line and "ETA" in line


def test_the_console_script_runs_the_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "pool"
    if not script.exists():
        pytest.skip("the package is not installed with its console script in this environment")
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    done = subprocess.run(
        [str(script), "run", "_batch_jobs:shout", str(source), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"result": "A"' in (tmp_path / "in.results.jsonl").read_text()
