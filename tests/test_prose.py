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
    avx2 = course_run("cpu-smoke", "avx2")["03"]  # both kernel sets are measured, and both are named
    assert (
        f"{measured['wall_seconds'] / 60:.1f} min with AVX-512, {avx2['wall_seconds'] / 60:.1f} min with AVX2 "
        "only (measured)"
    ) in row
    assert re.search(r"\| \d+ \| \d+ \|$", row)  # training steps and validations from the recipe check


def test_cpu_smoke_promises_the_measured_course_time_on_both_kernel_sets():
    """``expected.total_minutes`` (AVX-512, the benchmark machine) and ``total_minutes_avx2`` are the measured
    whole-course runs, rounded up to the minute: what `runtime.start` prints is what a learner waits."""
    import json
    import math

    from ragcourse.config import load_config, project_root

    expected = load_config("cpu-smoke").expected
    results = project_root() / "benchmarks" / "results"
    for name, promised in (
        ("course_run_cpu-smoke.json", expected.total_minutes),
        ("course_run_cpu-smoke_avx2.json", expected.total_minutes_avx2),
    ):
        run = json.loads((results / name).read_text())
        assert all(r["ok"] for r in run["notebooks"]) and len(run["notebooks"]) == 7, name
        assert promised == math.ceil(run["total_wall_seconds"] / 60), (name, promised, run["total_wall_seconds"])


def test_the_benchmark_headlines_are_generated_from_the_results():
    """benchmarks/README.md's headline table is a generated block: its course row is the measured run, each row
    names its result file and the day it was measured."""
    from ragcourse.config import project_root

    readme = (project_root() / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert "<!-- generated: benchmark-headlines -->" in readme
    table = prose.benchmark_headlines()
    native = course_run("cpu-smoke")
    minutes = sum(r["wall_seconds"] for r in native.values()) / 60
    course = next(line for line in table.splitlines() if line.startswith("| whole course"))
    assert f"**{minutes:.1f} min**" in course and re.search(r"\| \d{4}-\d\d-\d\d \|", course)
    body = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert len(body) >= 8 and all(line.count(" | ") == 3 for line in body)
