"""The workshop kit (ragcourse.workshop): learner copies, navigation links, the Colab install line. Fast: no models."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ragcourse import workshop
from ragcourse.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LEARNER = NOTEBOOKS / "learner"


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A copy of the real course notebooks; 00_setup gains a synthetic solution cell with a "Your turn" prompt."""
    src = tmp_path / "notebooks"
    src.mkdir()
    for path in workshop.notebook_order(NOTEBOOKS):
        shutil.copy(path, src / path.name)
    nb = nbformat.read(src / "00_setup.ipynb", as_version=4)
    cell = nbformat.v4.new_code_cell(
        "# Your turn (easy): print the preset.\n# Hint: cfg.preset\nprint(cfg.preset)\n",
        metadata={"tags": ["solution"]},
    )
    cell.id = "synthetic-solution"
    nb.cells.append(cell)
    nbformat.write(nb, src / "00_setup.ipynb")
    return src


def _set_first_cell(path: Path, old: str, new: str) -> None:
    nb = nbformat.read(path, as_version=4)
    assert old in nb.cells[0].source
    nb.cells[0].source = nb.cells[0].source.replace(old, new)
    nbformat.write(nb, path)


def test_learner_copy_blanks_solutions_and_keeps_every_other_cell():
    nb = nbformat.read(NOTEBOOKS / "02_lora_config.ipynb", as_version=4)
    solutions = [i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", [])]
    assert solutions, "02_lora_config has solution cells to blank"
    before = nbformat.writes(nb)
    copy = workshop.learner_copy(nb)
    assert nbformat.writes(nb) == before, "the input notebook is not changed"
    assert len(copy.cells) == len(nb.cells)
    for i, (orig, new) in enumerate(zip(nb.cells, copy.cells)):
        assert new.id == orig.id
        if i in solutions:
            assert new.source == "# TODO: your code here\n..."
            assert new.metadata["tags"] == ["exercise"] and new.outputs == []
        else:
            assert new == orig, f"cell {i} changed"  # committed notebooks carry no outputs to strip


def test_learner_copy_keeps_the_your_turn_prompt_and_strips_outputs():
    prompt = "# Your turn (medium): count the parameters.\n# Use lora.count_lora_parameters."
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                f"{prompt}\nn = 1\n# a comment inside the solution", metadata={"tags": ["solution", "x"]}
            ),
            nbformat.v4.new_code_cell(
                "print(1)", execution_count=3, outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")]
            ),
        ]
    )
    exercise, plain = workshop.learner_copy(nb).cells
    assert exercise.source == f"{prompt}\n# TODO: your code here\n..."
    assert exercise.metadata["tags"] == ["exercise", "x"]
    assert plain.source == "print(1)" and plain.outputs == [] and plain.execution_count is None


def test_learner_copies_are_deterministic_and_written_once(course: Path, tmp_path: Path):
    dst = tmp_path / "learner"
    written = workshop.write_learner_copies(course, dst)
    assert sorted(p.name for p in written) == [p.name for p in workshop.notebook_order(course)]
    first = {p.name: p.read_bytes() for p in dst.iterdir()}
    assert workshop.write_learner_copies(course, dst) == []  # nothing changed, nothing rewritten
    shutil.rmtree(dst)
    workshop.write_learner_copies(course, dst)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == first  # no temp files left, same bytes
    exercise = nbformat.read(dst / "00_setup.ipynb", as_version=4).cells[-1]
    assert exercise.id == "synthetic-solution" and exercise.metadata["tags"] == ["exercise"]
    assert exercise.source == "# Your turn (easy): print the preset.\n# Hint: cfg.preset\n# TODO: your code here\n..."


def test_check_finds_stale_missing_and_orphaned_copies(
    course: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    dst = tmp_path / "learner"
    args = ["learner-copies", "--check", "--src", str(course), "--dst", str(dst)]
    assert main(["learner-copies", "--src", str(course), "--dst", str(dst)]) == 0
    assert workshop.stale_learner_copies(course, dst) == [] and main(args) == 0
    nb = nbformat.read(course / "00_setup.ipynb", as_version=4)
    nb.cells[-1].source = "print(cfg.preset, cfg.model.name)"  # the instructor edits a solution...
    nb.cells[0].source += "\n\nA new sentence."  # ...and the introduction
    nbformat.write(nb, course / "00_setup.ipynb")
    (dst / "01_data_prep.ipynb").unlink()
    shutil.copy(dst / "02_lora_config.ipynb", dst / "09_gone.ipynb")
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert all(name in out for name in ("00_setup.ipynb", "01_data_prep.ipynb", "09_gone.ipynb"))
    assert "02_lora_config" not in out
    assert workshop.stale_learner_copies(course, dst) == ["00_setup.ipynb", "01_data_prep.ipynb", "09_gone.ipynb"]
    workshop.write_learner_copies(course, dst)
    assert workshop.stale_learner_copies(course, dst) == []
    assert main(["learner-copies", "--src", str(tmp_path / "nowhere"), "--dst", str(dst)]) == 2
    assert len(list(dst.glob("*.ipynb"))) == len(workshop.notebook_order(course))  # a wrong --src deletes nothing


def test_navigation_expects_badge_and_neighbours():
    navs = workshop.navigation(NOTEBOOKS)
    assert navs[0].notebook == "00_setup.ipynb" and navs[0].previous is None and navs[-1].next is None
    assert (
        navs[0].badge_url
        == "https://colab.research.google.com/github/ragcourse/ragcourse/blob/main/notebooks/00_setup.ipynb"
    )
    assert navs[1].previous == "00_setup.ipynb" and navs[1].next == navs[2].notebook


def test_link_problems_finds_broken_and_wrong_links_and_fix_repairs_them(course: Path):
    _set_first_cell(course / "03_qlora_training.ipynb", "(04_adapter_merge.ipynb)", "(07_missing.ipynb)")
    _set_first_cell(
        course / "02_lora_config.ipynb",
        "Previous: [01 · Data prep](01_data_prep.ipynb)",
        "Previous: [00 · Setup](00_setup.ipynb)",
    )
    _set_first_cell(course / "04_adapter_merge.ipynb", "/04_adapter_merge.ipynb)", "/04_merge.ipynb)")
    problems = workshop.link_problems(course)
    assert "03_qlora_training.ipynb: link to 07_missing.ipynb, which does not exist" in problems
    assert "02_lora_config.ipynb: Previous links to 00_setup.ipynb, expected 01_data_prep.ipynb" in problems
    assert any(p.startswith("04_adapter_merge.ipynb: no Colab badge") for p in problems)
    before = {p.name: nbformat.read(p, as_version=4) for p in workshop.notebook_order(course)}

    changed = {p.name for p in workshop.fix_navigation(course)}
    assert {"02_lora_config.ipynb", "03_qlora_training.ipynb", "04_adapter_merge.ipynb"} <= changed
    assert workshop.link_problems(course) == []
    assert workshop.fix_navigation(course) == []
    for name, old in before.items():
        new = nbformat.read(course / name, as_version=4)
        assert new.cells[1:] == old.cells[1:], f"{name}: only the first cell may change"
    first = nbformat.read(course / "03_qlora_training.ipynb", as_version=4).cells[0].source
    assert "Next: [04 · Adapter merge](04_adapter_merge.ipynb)" in first  # link text reused from 05's Previous


# The real notebooks: notebook 05's first cell links "Next" to 06_evaluation.ipynb, which is still being written,
# so link_problems(notebooks/) currently reports exactly that one problem. The assertion switches on once 06 exists.
@pytest.mark.skipif(
    not (NOTEBOOKS / "06_evaluation.ipynb").exists(), reason="notebooks/06_evaluation.ipynb not written yet"
)
def test_real_notebooks_have_no_link_problems():
    assert workshop.link_problems(NOTEBOOKS) == []


@pytest.mark.skipif(not LEARNER.exists(), reason="notebooks/learner not generated yet (ragcourse learner-copies)")
def test_committed_learner_copies_are_up_to_date():
    assert workshop.stale_learner_copies(NOTEBOOKS, LEARNER) == [], "run: ragcourse learner-copies"


def test_import_is_light():
    code = "import sys, ragcourse.workshop; print([m for m in ('torch', 'nbformat') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
