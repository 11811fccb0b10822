"""Fault campaign of the local runner: SIGKILL ``exo2micro run`` at random instants in every
stage and every mode, resume, and compare with an uninterrupted run.

For each kill, a mode (serial, process, thread, subprocess, in turn) and a target stage (1-4,
in turn) are chosen; the runner is started on a fresh output folder, and once a random pair
has begun the target stage (the record of the stage before it exists, or the runner started
for stage 1) it is SIGKILLed after a further random delay — the runner process only, never
its process group: its pool workers and task subprocesses must die by themselves
(``exo2micro.batch.lifecycle``). Then the campaign checks that no process of the killed run
survives, runs the same command again to completion, and compares every output TIFF byte for
byte and every ``result.json``'s science values with an uninterrupted run of the same mode
(``bench/compare_outputs.py``): the number of native threads, and
in thread mode the shared thread pools, can change the last bit of a floating-point reduction,
so modes are not compared with each other.

    .venv/bin/python bench/fault_campaign.py --kills 24 --seed 1      # the documented run

Prints one line per kill and a table of kills per mode × stage; exit 1 when any output
differs or any process survived. ``tests/reliability/test_runner_fault_campaign.py`` runs a
seeded subset.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare_outputs import compare  # noqa: E402

from tests.reliability.runner_cases import MARK, wait_no_survivors  # noqa: E402
from tests.runner_helpers import SIZE, child_env, exo2micro_cmd, make_raw  # noqa: E402

MODES = ("serial", "process", "thread", "subprocess")
STAGE_RECORDS = {1: "01_load", 2: "02_align_boundary", 3: "03_align_interior",
                 4: "04_subtract"}


@dataclass
class Kill:
    """One SIGKILL of the runner and what followed."""

    mode: str
    target_stage: int
    delay_s: float
    at_stage: int | None = None     # first stage without a record when killed (None: done)
    survivors: int = 0
    resumed_rc: int | None = None
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.survivors == 0 and self.resumed_rc == 0 and not self.differences


def _cmd(raw: Path, out: Path, mode: str) -> list[str]:
    return exo2micro_cmd("run", "--raw-dir", str(raw), "--outdir", str(out), "--parallel",
                         mode, "--workers", "2", "--cpus", "2")


def _env(mark: str) -> dict[str, str]:
    """The runner's environment, marked so that its survivors can be found."""
    return child_env(**{MARK: mark})


def _run(raw: Path, out: Path, mode: str, mark: str) -> int:
    done = subprocess.run(_cmd(raw, out, mode), env=_env(mark), capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
    return done.returncode


def _stage_reached(out: Path, pairs: list[tuple[str, str]]) -> int | None:
    """The first stage without a record of the first unfinished pair (None: all finished)."""
    for sample, dye in pairs:
        stages = out / sample / dye / "stages"
        for stage, name in STAGE_RECORDS.items():
            if not (stages / f"{name}.json").exists():
                return stage
    return None


def _started(out: Path, pair: tuple[str, str], stage: int) -> bool:
    if stage == 1:
        return True
    return (out / pair[0] / pair[1] / "stages" / f"{STAGE_RECORDS[stage - 1]}.json").exists()


def one_kill(raw: Path, out: Path, pairs: list[tuple[str, str]], mode: str, stage: int,
             rng: random.Random, reference: Path) -> Kill:
    """Kill the runner once in ``stage`` of a random pair, resume, compare with ``reference``."""
    kill = Kill(mode, stage, round(rng.uniform(0.0, 0.6), 3))
    pair = rng.choice(pairs)
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(_cmd(raw, out, mode), env=_env(mark), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _started(out, pair, stage) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(kill.delay_s)
    proc.send_signal(signal.SIGKILL)  # the runner only: its children must follow by themselves
    proc.wait()
    kill.at_stage = _stage_reached(out, pairs)
    left = wait_no_survivors(mark, 5.0)
    kill.survivors = len(left)
    for p in left:
        p.kill()
    kill.resumed_rc = _run(raw, out, mode, mark)
    kill.survivors += len(wait_no_survivors(mark, 5.0))
    kill.differences = compare(reference, out)[2]
    return kill


def run_campaign(work: Path, kills: int, seed: int, modes: tuple[str, ...] = MODES,
                 n_pairs: int = 2, size: tuple[int, int] = SIZE,
                 log: bool = True) -> list[Kill]:
    """Run ``kills`` kills in ``work`` (raw batch, references and one folder per kill)."""
    rng = random.Random(seed)
    raw = work / "raw"
    pairs = make_raw(raw, n_pairs, size=size)
    references = {mode: work / f"reference-{mode}" for mode in modes}
    for mode, folder in references.items():
        if _run(raw, folder, mode, uuid.uuid4().hex) != 0:
            raise RuntimeError(f"the uninterrupted {mode} run failed")
    out: list[Kill] = []
    for i in range(kills):
        mode, stage = modes[i % len(modes)], (i // len(modes) + i) % 4 + 1
        kill = one_kill(raw, work / f"kill-{i:02d}-{mode}", pairs, mode, stage, rng,
                        references[mode])
        out.append(kill)
        if log:
            print(f"kill {i + 1:>2}: {mode:<10} target stage {stage}, +{kill.delay_s:.2f} s: "
                  f"killed in stage {kill.at_stage or '-'}, {kill.survivors} survivor(s), "
                  f"resume rc {kill.resumed_rc}, "
                  f"{'identical' if not kill.differences else kill.differences[:3]}",
                  flush=True)
    return out


def table(kills: list[Kill]) -> str:
    """Kills per mode × stage in which the runner died, and the totals."""
    lines = ["| mode | stage 1 | stage 2 | stage 3 | stage 4 | after stage 4 | identical | "
             "survivors |", "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        rows = [k for k in kills if k.mode == mode]
        if not rows:
            continue
        cells = [str(sum(k.at_stage == s for k in rows)) for s in (1, 2, 3, 4, None)]
        lines.append(f"| {mode} | {' | '.join(cells)} | "
                     f"{sum(not k.differences for k in rows)}/{len(rows)} | "
                     f"{sum(k.survivors for k in rows)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keep the folders here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2m-campaign-") as tmp:
        work = args.work or Path(tmp)
        t0 = time.monotonic()
        kills = run_campaign(work, args.kills, args.seed, n_pairs=args.pairs)
        print(table(kills))
        print(f"{len(kills)} kills, {sum(k.ok for k in kills)} resumed to identical outputs "
              f"with no surviving process, {time.monotonic() - t0:.0f} s")
    return 0 if all(k.ok for k in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
