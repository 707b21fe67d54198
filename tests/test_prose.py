"""Numbers in the notebooks' prose come from code and benchmark results (``ragcourse prose``), never typed by hand."""

import re

from ragcourse import prose
from ragcourse.runtime import course_run


def test_every_notebook_has_a_generated_prerequisites_table_and_it_is_current():
    paths = prose.notebook_paths()
    assert len(paths) == 7
    for path in paths:
        assert "<!-- generated: prerequisites -->" in path.read_text(), path.name
    assert prose.regenerate(check=True) == [], "stale generated prose: run `ragcourse prose`"


def test_the_cpu_smoke_row_is_the_measured_course_run():
    table = prose.prerequisites_table("03")
    measured = course_run("cpu-smoke")["03"]
    row = next(line for line in table.splitlines() if line.startswith("| `cpu-smoke`"))
    assert f"{measured['wall_seconds'] / 60:.1f} min (measured)" in row
    assert re.search(r"\| \d+ \| \d+ \|$", row)  # training steps and validations from the recipe check
