#!/usr/bin/env python3
"""Record an environment that ran the course's tests: README's "Tested with" table is generated from these records.

Run with the environment's own Python after its tests passed (``scripts/colab_twin.py test --record`` and
``scripts/floors_env.py test --record`` do it; for the CPU pins, after ``make test``, with its summary line)::

    .venv/bin/python scripts/record_environment.py cpu --ran "make test: unit tests + 7 notebooks" \\
        --passed 495 --seconds 2604

It writes ``benchmarks/results/tested_with.json`` (one entry per environment, replaced on each record): the Python,
the versions of the course's main libraries read from the installed metadata, what ran and when. ``ragcourse prose``
turns it into README's table (``prose --check`` in the tests keeps the two equal).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ragcourse.env import versions  # noqa: E402  (stdlib only: runs before the heavy libraries are imported)

RESULT = ROOT / "benchmarks" / "results" / "tested_with.json"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "sentence-transformers",
    "llama-index-core",
    "ragas",
    "numpy",
    "pandas",
)
ENVIRONMENTS = ("cpu", "colab-twin", "floors")


def passed_in(junit: Path) -> int:
    """Tests that passed, from pytest's JUnit XML report (0 when there is none)."""
    import xml.etree.ElementTree as ET

    if not junit.is_file():
        return 0
    suites = ET.parse(junit).getroot().iter("testsuite")
    not_passed = ("failures", "errors", "skipped")
    return sum(int(s.get("tests", 0)) - sum(int(s.get(k, 0)) for k in not_passed) for s in suites)


def record_with(python: Path, name: str, ran: str, passed: int, seconds: float) -> None:
    """Record a run of environment ``name`` with that environment's own Python (its versions are read there)."""
    import subprocess

    subprocess.run(
        [str(python), __file__, name, "--ran", ran, "--passed", str(passed), "--seconds", str(seconds)],
        check=True,
        cwd=ROOT,
    )


def record(name: str, ran: str, passed: int, seconds: float, path: Path = RESULT) -> dict:
    data = json.loads(path.read_text()) if path.is_file() else {}
    manifest = next((json.loads(p.read_text()) for p in Path(sys.prefix).glob("ragcourse-*.json")), {})
    entry = {
        "recorded": dt.date.today().isoformat(),
        "versions": versions(PACKAGES),
        "ran": ran,
        "passed": passed,
        "seconds": round(seconds),
        "snapshot_date": manifest.get("snapshot_date"),
    }
    data[name] = {k: v for k, v in entry.items() if v is not None}
    path.write_text(json.dumps({k: data[k] for k in ENVIRONMENTS if k in data}, indent=1) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("environment", choices=ENVIRONMENTS)
    parser.add_argument("--ran", required=True, help="what ran, in words")
    parser.add_argument("--passed", type=int, required=True, help="tests passed")
    parser.add_argument("--seconds", type=float, required=True, help="how long the tests took")
    args = parser.parse_args(argv)
    print(json.dumps(record(args.environment, args.ran, args.passed, args.seconds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
