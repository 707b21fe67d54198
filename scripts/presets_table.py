"""Regenerate README.md's presets table from each preset's memory plan (ragcourse.memory.phase_plan).

python scripts/presets_table.py          # rewrite the table in README.md
python scripts/presets_table.py --check  # exit 1 when README.md's table is stale (tests/test_memory.py runs it)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ragcourse, not another install's

from ragcourse.config import project_root
from ragcourse.memory import with_presets_table


def main(argv: list[str]) -> int:
    readme = project_root() / "README.md"
    text = readme.read_text(encoding="utf-8")
    fresh = with_presets_table(text)
    if "--check" in argv:
        if fresh != text:
            print("README.md's presets table is stale: run python scripts/presets_table.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
