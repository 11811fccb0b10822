"""A small emulation of what Nextflow does with our modules, for machines without Nextflow.

For one task it: stages the inputs as Nextflow would (links named by `stageAs`, `*` in a folder
part replaced by the file's index), renders the process's `script:` with the real Groovy
(render.groovy, one JVM for the whole run), runs it with bash in a fresh task folder with bin/ on
PATH, and collects the declared outputs (globs, staged inputs excluded, `arity`, `optional`).
It is not Nextflow, but it runs the real scripts and the real tools through the same staging, so
a stage that needs a file it was not given, or writes a file no output declares, is caught.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conftest import JAVA_OPTIONS, REPO

RENDER = Path(__file__).resolve().parent / "render.groovy"

# Files a task folder may hold besides its staged inputs and declared outputs.
SCRATCH = {"e2m.err", ".command.sh", ".command.out", ".command.err"}


class Renderer:
    """render.groovy as a server: one JVM, one JSON request/answer per line."""

    def __init__(self, jar: Path) -> None:
        self.proc = subprocess.Popen(
            ["java", *JAVA_OPTIONS, "-cp", str(jar.resolve()), "groovy.ui.GroovyMain", str(RENDER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def render(self, functions: list[str], script: str, binding: dict[str, Any]) -> str:
        assert self.proc.stdin and self.proc.stdout
        request = {"functions": functions, "script": script, "binding": binding}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"rendering failed: {answer['error']}")
        return answer["script"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class TaskResult:
    process: str
    workdir: Path
    exit_code: int
    stderr: str
    outputs: dict[str, Any] = field(default_factory=dict)  # emit -> value (None: not emitted)
    strays: list[str] = field(default_factory=list)  # files no output declares


def staged_names(stage_as: str | None, files: list[Path]) -> list[str]:
    """Nextflow's names for files staged with `stageAs` (TaskProcessor.expandWildcards)."""
    if not files:
        return []
    if not stage_as or stage_as == "*":
        return [f.name for f in files]
    names = []
    for i, f in enumerate(files, start=1):
        parent, _, name = stage_as.rpartition("/")
        index = "" if len(files) == 1 else str(i)
        name = f.name if name in ("*", "") else name.replace("*", index)
        if parent:
            parent = parent.replace("*", str(i))
            names.append(f"{parent}/{name}")
        else:
            names.append(name)
    return names


class Emulator:
    def __init__(self, dump: dict, jar: Path, root: Path) -> None:
        self.processes = {p["name"]: p for p in dump["processes"]}
        self.functions = dump["functions"]
        self.renderer = Renderer(jar)
        self.root = root
        self.count = 0
        bin_dir = REPO / "bin"
        self.env = dict(
            os.environ,
            PATH=os.pathsep.join(
                [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
        )

    def close(self) -> None:
        self.renderer.close()

    def _functions_for(self, proc: dict) -> list[str]:
        # every function of the module file, plus those it calls from elsewhere (utils.nf)
        wanted = set(proc["script_calls"])
        return [
            f["source"] for f in self.functions if f["file"] == proc["file"] or f["name"] in wanted
        ]

    def run(self, name: str, values: list[Any], cpus: int = 2, attempt: int = 1) -> TaskResult:
        """Run process `name` with one value per input declaration (a tuple input is a list)."""
        proc = self.processes[name]
        self.count += 1
        work = self.root / f"{self.count:02d}_{name.lower()}"
        work.mkdir(parents=True)
        binding: dict[str, Any] = {"task": {"ext": {"args": ""}, "cpus": cpus, "attempt": attempt}}
        staged: set[str] = set()
        assert len(values) == len(proc["inputs"]), f"{name}: {len(proc['inputs'])} inputs"
        for decl, value in zip(proc["inputs"], values, strict=True):
            elements = decl["elements"] if decl["qualifier"] == "tuple" else [decl]
            items = value if decl["qualifier"] == "tuple" else [value]
            assert len(elements) == len(items), f"{name}: tuple input of {len(elements)}"
            for element, item in zip(elements, items, strict=True):
                var = element["pattern"]
                if element["qualifier"] == "val":
                    binding[var] = item
                    continue
                files = [Path(p) for p in (item if isinstance(item, list) else [item])]
                names = staged_names(element["options"].get("stageAs"), files)
                for src, dest in zip(files, names, strict=True):
                    target = work / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(src.resolve())
                    staged.add(dest)
                single = len(names) == 1 and not str(
                    element["options"].get("arity", "")
                ).startswith("0")
                binding[var] = names[0] if single else names
        script = self.renderer.render(self._functions_for(proc), proc["script_source"], binding)
        (work / ".command.sh").write_text(script)
        run = subprocess.run(
            ["bash", "-euo", "pipefail", ".command.sh"],
            cwd=work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        (work / ".command.err").write_text(run.stderr)
        result = TaskResult(name, work, run.returncode, run.stderr)
        if run.returncode == 0:
            result.outputs, declared = self._collect(proc, work, binding, staged)
            result.strays = self._strays(work, staged, declared)
        return result

    def _collect(
        self, proc: dict, work: Path, binding: dict, staged: set[str]
    ) -> tuple[dict[str, Any], set[str]]:
        outputs: dict[str, Any] = {}
        declared: set[str] = set()
        for decl in proc["outputs"]:
            emit = decl["options"]["emit"]
            elements = decl["elements"] if decl["qualifier"] == "tuple" else [decl]
            tuple_optional = bool(decl["options"].get("optional"))
            values: list[Any] = []
            missing = False
            for element in elements:
                if element["qualifier"] == "val":
                    values.append(binding[element["pattern"]])
                    continue
                pattern = element["pattern"]
                matches = sorted(
                    m for m in glob.glob(str(work / pattern)) if not Path(m).name.startswith(".")
                )
                rel = [str(Path(m).relative_to(work)) for m in matches]
                kept = [m for m, r in zip(matches, rel, strict=True) if r not in staged]
                declared.update(str(Path(m).relative_to(work)) for m in kept)
                arity = str(element["options"].get("arity", ""))
                optional = tuple_optional or bool(element["options"].get("optional"))
                if not kept:
                    if arity.startswith("0") and not tuple_optional:
                        values.append([])
                        continue
                    if optional:
                        missing = True
                        continue
                    raise AssertionError(f"{proc['name']}: missing output {pattern!r} in {work}")
                if element["options"].get("type") == "dir":
                    assert all(Path(m).is_dir() for m in kept), pattern
                values.append(kept if arity or len(kept) > 1 else kept[0])
            outputs[emit] = None if missing else values
        return outputs, declared

    @staticmethod
    def _strays(work: Path, staged: set[str], declared: set[str]) -> list[str]:
        strays = []
        covered = {d for d in declared}
        for path in work.rglob("*"):
            rel = str(path.relative_to(work))
            if path.is_dir() or rel in staged or rel in SCRATCH:
                continue
            if any(rel == d or rel.startswith(d + "/") for d in covered):
                continue
            strays.append(rel)
        return sorted(strays)
