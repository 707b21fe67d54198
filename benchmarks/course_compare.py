"""The whole course per notebook, native vs forced AVX2, before and after a change (issue 20): one table from four
``course_run.py`` results, each measured alone on the machine.

    python benchmarks/course_compare.py            # reads the four results below, writes course_compare_<preset>.md

Inputs (``benchmarks/results/``): ``course_run_<preset>.json`` and ``course_run_<preset>_avx2.json`` (after: the
code as it is), ``course_run_<preset>_before.json`` and ``course_run_<preset>_avx2_before.json`` (before: the same
runs at the commit named in ``--before-label``). A missing input leaves its column empty.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (("native", "before", ""), ("native", "after", ""), ("AVX2", "before", "_avx2"), ("AVX2", "after", "_avx2"))


def load(preset: str, suffix: str, when: str) -> dict[str, Any] | None:
    path = RESULTS / f"course_run_{preset}{suffix}{'_before' if when == 'before' else ''}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def table(preset: str, before_label: str, after_label: str) -> str:
    runs = {(isa, when): load(preset, suffix, when) for isa, when, suffix in COLUMNS}
    names = sorted({r["notebook"] for run in runs.values() if run for r in run["notebooks"]})
    head = [
        f"Course run on `{preset}` per notebook, wall seconds, each run alone on the machine "
        f"(`benchmarks/course_run.py`; AVX2: torch, oneMKL, oneDNN and bitsandbytes held to AVX2).",
        "",
        f"Before: {before_label}. After: {after_label}.",
        "",
    ]
    for (isa, when), run in runs.items():
        if run:
            head.append(f"- {isa}, {when}: {run['created_at']}, {run['machine']}")
    lines = head + [
        "",
        "| notebook | " + " | ".join(f"{isa} {when}" for isa, when, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]

    def cell(run: dict[str, Any] | None, name: str | None) -> str:
        if not run:
            return ""
        rows = [r for r in run["notebooks"] if name is None or r["notebook"] == name]
        if not rows:
            return ""
        seconds = sum(r["wall_seconds"] or 0 for r in rows)
        failed = [r["notebook"][:2] for r in rows if not r["ok"]]
        text = f"{seconds / 60:.1f} min" if name is None else f"{seconds:.0f}"
        return text + (f" (failed: {', '.join(failed)})" if failed else "")

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(runs[(isa, when)], name) for isa, when, _ in COLUMNS) + " |")
    lines.append(
        "| **all notebooks** | " + " | ".join(cell(runs[(isa, when)], None) for isa, when, _ in COLUMNS) + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-smoke")
    parser.add_argument("--before-label", default="the commit before the change")
    parser.add_argument("--after-label", default="the code as it is")
    args = parser.parse_args()
    text = table(args.preset, args.before_label, args.after_label)
    out = RESULTS / f"course_compare_{args.preset}.md"
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
