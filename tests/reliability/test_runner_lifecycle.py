"""Process lifetime of the runner: a SIGKILLed or SIGTERMed runner leaves no worker or task
subprocess behind (none keeps writing into the output folder), a second run is then allowed,
SIGTERM stops like Ctrl-C and leaves no lock file, and a script without a ``__main__`` guard
is refused instead of re-running itself in every worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.runner_cases import (
    driver,
    kill_all,
    new_mark,
    start_driver,
    wait_for,
    wait_no_survivors,
)
from tests.runner_helpers import make_raw

#: parallel= value and the number of worker/child processes the runner starts for 2 pairs.
POOL_MODES = [("process", 2), ("subprocess", 1)]


@pytest.fixture(scope="module")
def raw2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw2")
    make_raw(raw, 2, size=(240, 200))
    return raw


def _ticking_batch(tmp_path: Path, raw: Path, mode: str) -> tuple[Path, Path]:
    out = tmp_path / "out"
    script = driver(tmp_path / "batch.py", f"""
        run_batch(None, None, parallel={mode!r}, n_workers=2, cpus=2, raw_dir={str(raw)!r},
                  output_dir={str(out)!r}, show_progress=False, task_fn=faults.tick_forever)
    """)
    return out, script


def _alive_counts(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.glob("*.alive")}


@pytest.mark.parametrize("mode, n_children", POOL_MODES)
def test_sigkilled_runner_leaves_no_worker_writing(mode: str, n_children: int, raw2: Path,
                                                    tmp_path: Path) -> None:
    out, script = _ticking_batch(tmp_path, raw2, mode)
    mark = new_mark()
    proc = start_driver(script, mark)
    try:
        wait_for(out / "SYN01-SybrGld.alive", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = wait_no_survivors(mark, timeout=5)
        assert not left, f"{mode}: {[p.cmdline() for p in left]} outlived the runner"
        before = _alive_counts(out)
        time.sleep(0.5)
        assert _alive_counts(out) == before  # nothing writes into the folder any more
        # The lock died with the runner: a second run on the folder is not refused.
        from exo2micro.batch.lock import OutputLock

        with OutputLock(out):
            pass
    finally:
        kill_all(wait_no_survivors(mark, timeout=0))


@pytest.mark.parametrize("mode", ["serial", "thread", "process", "subprocess"])
def test_sigterm_stops_like_ctrl_c(mode: str, raw2: Path, tmp_path: Path) -> None:
    out, script = _ticking_batch(tmp_path, raw2, mode)
    mark = new_mark()
    proc = start_driver(script, mark)
    try:
        wait_for(out / "SYN01-SybrGld.alive", proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 15
        assert proc.returncode == -signal.SIGTERM  # dies *by* SIGTERM, as a scheduler expects
        assert not wait_no_survivors(mark, timeout=5)
        assert not (out / ".exo2micro.lock").exists()  # released, and only after the workers
        before = _alive_counts(out)
        time.sleep(0.3)
        assert _alive_counts(out) == before
    finally:
        kill_all(wait_no_survivors(mark, timeout=0))


def test_script_without_main_guard_is_refused(raw2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = driver(tmp_path / "unguarded.py", f"""
        print("batch starts", flush=True)
        run_batch(None, None, parallel=True, n_workers=2, cpus=2, raw_dir={str(raw2)!r},
                  output_dir={str(out)!r}, to_stage=1, show_progress=False)
    """, guard=False)
    mark = new_mark()
    proc = start_driver(script, mark)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill_all(wait_no_survivors(mark, timeout=5))
    assert proc.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert "UnguardedMainError" in last and 'if __name__ == "__main__":' in last
    assert stdout.count("Pre-flight resource check") == 1  # no worker ran a batch again
    assert not list(out.glob("SYN0*/SybrGld/stages/*.json"))  # and none processed a pair
    assert not (out / ".exo2micro.lock").exists()


def test_guarded_script_runs(raw2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = driver(tmp_path / "guarded.py", f"""
        results = run_batch(None, None, parallel=True, n_workers=2, cpus=2,
                            raw_dir={str(raw2)!r}, output_dir={str(out)!r}, to_stage=1,
                            show_progress=False)
        assert [r["status"] for r in results] == ["complete", "complete"]
    """)
    mark = new_mark()
    proc = start_driver(script, mark)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert not wait_no_survivors(mark, timeout=5)
    assert os.path.isdir(out / "SYN02" / "SybrGld")
