#!/usr/bin/env python3
"""The Colab twin: Colab's own package versions in a local virtual environment, set up by the notebooks' setup cell.

``make colab-twin`` builds it (``build``) and runs the course in it (``test``: the fast unit tests and all seven
notebooks on ``cpu-smoke``); ``.ci/run`` does both. What a learner meets on Colab, step by step:

1. **Colab's preload.** Every package of the course's dependency graph (the names in ``constraints-cpu.txt``) that
   Colab preloads goes in at the version ``constraints/colab-snapshot.txt`` gives, with their dependencies held to the
   snapshot too. torch is Colab's version from the registry (``torch==2.11.0``: PyPI's CUDA build, which runs on a
   CPU; pip's cache keeps the 3 GB download for the next build), not Colab's ``+cu128`` local build, which lives on
   PyTorch's own index (unreachable here): the two differ only in the CUDA wheels they name.
2. **The setup cell.** The first code cell of ``notebooks/00_setup.ipynb``, executed as it stands, with
   ``google.colab`` stubbed and ``/content`` moved into the twin's folder (``RAGCOURSE_STORAGE=local``): it calls
   ``ragcourse.colab.setup``, whose pip commands install ``requirements-colab.txt`` and the package ``--no-deps``
   into the twin, exactly as on Colab.
3. **Test tools** the setup cell does not install (pytest-timeout, nbval), held to what is installed by then.
4. A manifest (``ragcourse-twin.json`` in the twin) says what moved; ``tests/test_colab.py`` fails when a package
   the setup cell must not move differs from the snapshot, so the twin cannot drift into the course's own pins.

Python: Colab runs 3.13; no registry this project reaches provides a 3.13 interpreter (Debian 12 has 3.11; the
``portable-python`` packages on PyPI and npm download CPython from python.org or GitHub at install), so the twin runs
on this machine's 3.11 (README, "Tested with").

Usage::

    python3 scripts/colab_twin.py build      # creates .venv-colab-twin (skipped when its inputs did not change)
    python3 scripts/colab_twin.py test       # fast unit tests + the notebooks, in the twin
    python3 scripts/colab_twin.py all        # both
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab_resolver_check as resolver  # noqa: E402  (the snapshot reader and the protected-package rules)
from record_environment import passed_in, record_with  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TWIN = ROOT / ".venv-colab-twin"
MANIFEST = "ragcourse-twin.json"
INPUTS = (
    "constraints/colab-snapshot.txt",
    "requirements-colab.txt",
    "constraints-cpu.txt",
    "pyproject.toml",
    "scripts/colab_twin.py",
    "ragcourse/colab.py",
    "notebooks/00_setup.ipynb",
)
# Colab's CUDA wheels: PyPI's torch 2.11.0 names CUDA 13 ones, Colab's +cu128 build the CUDA 12.8 ones it preloads.
CUDA_WHEELS = re.compile(r"^(nvidia-.*|cuda-.*)$")
TEST_TOOLS = ("pytest-timeout", "nbval")


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args], check=True)


def _freeze(python: Path) -> dict[str, str]:
    """{canonical name: version} of the twin's installed distributions."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd=python.parent
    ).stdout
    return {resolver.canonicalize_name(n): v for n, v in json.loads(out).items()}


def _names(path: Path) -> set[str]:
    return {
        resolver.canonicalize_name(resolver.Requirement(line).name) for line in resolver.read_requirement_lines(path)
    }


def snapshot_date() -> str:
    """The snapshot's date, from its header (``... at commit <sha> (YYYY-MM-DD)``)."""
    match = re.search(r"\((\d{4}-\d{2}-\d{2})\)", resolver.SNAPSHOT.read_text())
    return match.group(1) if match else "unknown"


def preload(snapshot: dict[str, str]) -> dict[str, str]:
    """Colab's preloaded packages the course's dependency graph uses: {name: snapshot version (public part)}."""
    graph = _names(ROOT / "constraints-cpu.txt")
    return {n: str(resolver.Version(v).public) for n, v in snapshot.items() if n in graph and not CUDA_WHEELS.match(n)}


def inputs_digest() -> str:
    return hashlib.sha256(b"".join((ROOT / p).read_bytes() for p in INPUTS)).hexdigest()


def _content(twin: Path) -> Path:
    return twin / "content"


SETUP_DRIVER = """
import json, os, sys, types
from pathlib import Path
content, cell = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
google, stub = types.ModuleType("google"), types.ModuleType("google.colab")
stub.drive = types.SimpleNamespace(mount=lambda path: None)
stub.userdata = types.SimpleNamespace(get=lambda name: os.environ[name])
sys.modules.update({"google": google, "google.colab": stub})
sys.path.insert(0, sys.argv[3])
from ragcourse import colab
for name, path in {"CHOICE_FILE": ".ragcourse-storage", "COLAB_CONFIG": "ragcourse-colab.yaml",
                   "LOCAL_OUTPUTS": "ragcourse-outputs", "DRIVE_MOUNT": "drive",
                   "DRIVE_OUTPUTS": "drive/MyDrive/ragcourse-outputs"}.items():
    setattr(colab, name, content / path)
exec(compile(cell, "notebooks/00_setup.ipynb: setup cell", "exec"))
"""


def setup_cell() -> str:
    """The first code cell of notebook 00, as learners run it on Colab (the same in every notebook)."""
    nb = json.loads((ROOT / "notebooks" / "00_setup.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    return "".join(cell["source"])


def run_setup_cell(python: Path, twin: Path) -> None:
    """Execute the setup cell in the twin's Python with ``google.colab`` stubbed and ``/content`` inside the twin."""
    content = _content(twin)
    content.mkdir(parents=True, exist_ok=True)
    cell = content / "setup_cell.py"
    cell.write_text(setup_cell().replace('"/content/ragcourse"', json.dumps(str(ROOT))))
    (ROOT / ".colab-installed").unlink(missing_ok=True)  # the setup cell's "already installed" stamp
    env = {**os.environ, "RAGCOURSE_STORAGE": "local"}
    env.pop("RAGCOURSE_CONFIG", None)
    for attempt in (1, 2):  # the cell ends the kernel once when pip replaced an imported package: run it again
        proc = subprocess.run(
            [str(python), "-c", SETUP_DRIVER, str(content), str(cell), str(ROOT)], env=env, cwd=content
        )
        if proc.returncode == 0:
            return
        if proc.returncode != -signal.SIGKILL or attempt == 2:
            raise subprocess.CalledProcessError(proc.returncode, "the setup cell")
        print("  (the setup cell restarted the runtime, as on Colab: running it again)")


def build(twin: Path = TWIN, force: bool = False) -> Path:
    """Create the twin (or keep it when its inputs did not change); returns its Python."""
    python = twin / "bin" / "python"
    stamp = twin / ".inputs-sha256"
    if not force and stamp.is_file() and stamp.read_text() == inputs_digest():
        print(f"Colab twin up to date: {twin.relative_to(ROOT)}")
        return python
    t0 = time.perf_counter()
    shutil.rmtree(twin, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(twin)], check=True)
    snapshot = resolver.read_snapshot(resolver.SNAPSHOT)
    wanted = preload(snapshot)
    constraints = twin / "colab-snapshot-constraints.txt"
    constraints.write_text(
        "".join(
            f"{n}=={v}\n"
            for n, v in sorted(
                (n, str(resolver.Version(v).public)) for n, v in snapshot.items() if not CUDA_WHEELS.match(n)
            )
        )
    )
    print(f"1/3 Colab's preload: {len(wanted)} packages at the snapshot's versions (torch {wanted.get('torch')})")
    _pip(python, f"pip=={snapshot['pip']}")  # Colab's pip runs the setup cell's installs
    _pip(python, "-c", str(constraints), *(f"{n}=={v}" for n, v in sorted(wanted.items())))
    preloaded = _freeze(python)
    print("2/3 the setup cell of notebooks/00_setup.ipynb (ragcourse.colab.setup, google.colab stubbed)")
    run_setup_cell(python, twin)
    after_setup = _freeze(python)
    print("3/3 test tools: " + ", ".join(TEST_TOOLS))
    pins = {
        resolver.canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
        for line in resolver.read_requirement_lines(ROOT / "constraints-cpu.txt")
        if "==" in line
    }
    held = twin / "held.txt"
    held.write_text("".join(f"{n}=={v}\n" for n, v in sorted((pins | after_setup).items()) if n != "ragcourse"))
    _pip(python, "-c", str(held), *TEST_TOOLS)
    final = _freeze(python)
    moved = {n: [v, after_setup[n]] for n, v in preloaded.items() if after_setup.get(n) != v}
    (twin / MANIFEST).write_text(
        json.dumps(
            {
                "environment": "colab-twin",
                "built": dt.date.today().isoformat(),
                "python": subprocess.run(
                    [str(python), "-c", "import platform; print(platform.python_version())"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip(),
                "snapshot": "constraints/colab-snapshot.txt",
                "snapshot_date": snapshot_date(),
                "colab_torch": snapshot.get("torch"),
                "preloaded": preloaded,
                "moved_by_setup_cell": moved,
                "added_by_setup_cell": sorted(set(after_setup) - set(preloaded)),
                "versions": final,
                "build_seconds": round(time.perf_counter() - t0),
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    stamp.write_text(inputs_digest())
    print(
        f"Colab twin built in {time.perf_counter() - t0:.0f} s: {len(final)} distributions; the setup cell moved "
        + (", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(moved.items())) or "nothing")
    )
    return python


def run_tests(python: Path, runs: list[list[str]], env: dict[str, str], label: str) -> tuple[int, int, float]:
    """pytest once per entry of ``runs`` with ``python``, from the repository root: (status, passed, seconds)."""
    status, count, t_all = 0, 0, time.perf_counter()
    for i, what in enumerate(runs):
        t0, junit = time.perf_counter(), python.parent.parent / f"junit-{i}.xml"
        status |= subprocess.run(
            [str(python), "-m", "pytest", *what, "-p", "no:cacheprovider", f"--junit-xml={junit}"], cwd=ROOT, env=env
        ).returncode
        count += passed_in(junit)
        print(f"{label}: pytest {' '.join(what)} took {time.perf_counter() - t0:.0f} s")
    return status, count, time.perf_counter() - t_all


def test(twin: Path = TWIN, record_run: bool = False) -> int:
    """The fast unit tests, then every notebook on cpu-smoke, in the twin (outputs under the twin's /content)."""
    python = twin / "bin" / "python"
    env = {
        **os.environ,
        "RAGCOURSE_CONFIG": str(_content(twin) / "ragcourse-colab.yaml"),
        "RAGCOURSE_PRESET": "cpu-smoke",
    }
    status, count, seconds = run_tests(python, [["tests", "-m", "not slow"], ["notebooks"]], env, "Colab twin")
    if record_run and status == 0:
        record_with(python, "colab-twin", "fast unit tests + 7 notebooks", count, seconds)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("what", choices=["build", "test", "all"], nargs="?", default="all")
    parser.add_argument("--venv", type=Path, default=TWIN, help="the twin's folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when its inputs did not change")
    parser.add_argument(
        "--record",
        action="store_true",
        help="after a passing test run, write it to "
        "benchmarks/results/tested_with.json (README's table; not in CI, which must not change files)",
    )
    args = parser.parse_args(argv)
    twin = args.venv.resolve()
    if args.what in ("build", "all"):
        build(twin, args.force)
    return test(twin, args.record) if args.what in ("test", "all") else 0


if __name__ == "__main__":
    sys.exit(main())
