"""The workshop kit (docs/instructor.md): learner copies, notebook navigation, and the Colab install line.

* ``learner_copy`` / ``write_learner_copies``: the notebooks with every ``solution`` cell replaced by a stub
  tagged ``exercise`` (``ragcourse learner-copies``; ``--check`` says which copies are stale).
* ``navigation`` / ``link_problems`` / ``fix_navigation``: the first cell's Colab badge and previous/next links.
* ``setup_cell_source`` / ``setup_cell_problems`` / ``write_setup_cells``: the one Colab setup cell, generated from
  the repository address in ``course.py`` (``ragcourse setup-cells``; ``--check`` says which notebooks drift).
* ``in_colab`` / ``colab_install_command``: what a Colab setup cell checks and runs (``ragcourse.colab``).

Importing this module does no work: nbformat is imported inside the functions that read or write notebooks.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import resolve_path
from .course import BRANCH, colab_badge, colab_url, repository_url
from .hardware import in_colab

if TYPE_CHECKING:  # pragma: no cover
    from nbformat import NotebookNode

__all__ = [
    "Navigation",
    "colab_install_command",
    "fix_navigation",
    "in_colab",
    "learner_copy",
    "link_problems",
    "navigation",
    "notebook_order",
    "setup_cell_problems",
    "setup_cell_source",
    "stale_learner_copies",
    "write_learner_copies",
    "write_setup_cells",
]

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
YOUR_TURN = "# Your turn"
STUB = ["# TODO: your code here", "..."]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
# "Previous: [01 · Data prep](01_data_prep.ipynb)" in a notebook's first cell.
NAV_LINK = re.compile(r"(Previous|Next): \[([^\]]*)\]\(([^)\s]+)\)")
# Any relative link to a notebook: no scheme, no leading slash.
RELATIVE_NOTEBOOK_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/)([^)\s#]+\.ipynb)(?:#[^)\s]*)?\)", re.I)


# -- learner copies ---------------------------------------------------------------------------


def _stub(source: str) -> str:
    """The exercise stub: the solution's leading ``# Your turn`` comment block (if any), then a TODO."""
    lines = source.splitlines()
    prompt: list[str] = []
    if lines and lines[0].startswith(YOUR_TURN):
        for line in lines:
            if not line.startswith("#"):
                break
            prompt.append(line)
    return "\n".join(prompt + STUB)


def learner_copy(nb: NotebookNode) -> NotebookNode:
    """A copy of ``nb`` for learners: ``solution`` code cells become ``exercise`` stubs, all outputs go.

    Every other cell keeps its source, metadata and id; ``nb`` itself is not changed.
    """
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        tags = cell.metadata.get("tags", [])
        if SOLUTION_TAG in tags:
            cell.source = _stub(cell.source)
            cell.metadata["tags"] = [EXERCISE_TAG if t == SOLUTION_TAG else t for t in tags]
    return out


def _dir(path: str | os.PathLike[str]) -> Path:
    return resolve_path(path)  # relative paths hang off the course checkout, as config paths do


def notebook_order(directory: str | os.PathLike[str] = "notebooks") -> list[Path]:
    """The course notebooks in ``directory`` (``NN_name.ipynb``), in course order."""
    return sorted(_dir(directory).glob(NOTEBOOK_GLOB))


def _read(path: Path) -> NotebookNode:
    import nbformat

    return nbformat.read(path, as_version=4)


def _dumps(nb: NotebookNode) -> str:
    import nbformat

    return nbformat.writes(nb) + "\n"  # byte for byte what nbformat.write (and Jupyter) save


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _expected_copies(src: Path, dst: Path) -> dict[Path, str]:
    sources = notebook_order(src)
    if not sources:  # a wrong --src must not read as "every learner copy is an orphan"
        raise FileNotFoundError(f"No course notebooks (NN_name.ipynb) in {src}.")
    return {dst / p.name: _dumps(learner_copy(_read(p))) for p in sources}


def _orphans(expected: dict[Path, str], dst: Path) -> list[Path]:
    return sorted(p for p in dst.glob(NOTEBOOK_GLOB) if p not in expected) if dst.is_dir() else []


def write_learner_copies(
    src_dir: str | os.PathLike[str] = "notebooks", dst_dir: str | os.PathLike[str] = "notebooks/learner"
) -> list[Path]:
    """Write the learner copy of every course notebook into ``dst_dir``; returns the paths it changed.

    Same input, byte-identical output (cell ids kept). Each file is written atomically; a copy whose
    source notebook is gone is removed.
    """
    src, dst = _dir(src_dir), _dir(dst_dir)
    expected = _expected_copies(src, dst)
    changed = []
    for path, text in expected.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            _write_atomic(path, text)
            changed.append(path)
    for orphan in _orphans(expected, dst):
        orphan.unlink()
        changed.append(orphan)
    return changed


def stale_learner_copies(
    src_dir: str | os.PathLike[str] = "notebooks", dst_dir: str | os.PathLike[str] = "notebooks/learner"
) -> list[str]:
    """Names of learner copies that are missing, differ from what would be generated, or have no source."""
    src, dst = _dir(src_dir), _dir(dst_dir)
    expected = _expected_copies(src, dst)
    stale = [p.name for p, text in expected.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    return sorted(stale + [p.name for p in _orphans(expected, dst)])


# -- navigation: Colab badge, previous and next ----------------------------------------------------


@dataclass(frozen=True)
class Navigation:
    """What a notebook's first cell should link to."""

    notebook: str
    badge_url: str
    previous: str | None
    next: str | None


def navigation(directory: str | os.PathLike[str] = "notebooks") -> list[Navigation]:
    """The expected Colab badge URL and previous/next notebook of each course notebook, in order."""
    names = [p.name for p in notebook_order(directory)]
    return [
        Navigation(name, colab_url(name), names[i - 1] if i > 0 else None, names[i + 1] if i + 1 < len(names) else None)
        for i, name in enumerate(names)
    ]


def _first_markdown(nb: NotebookNode) -> NotebookNode | None:
    return next((c for c in nb.cells if c.cell_type == "markdown"), None)


def _problems(text: str, nav: Navigation, directory: Path) -> list[str]:
    name = nav.notebook
    problems = [] if colab_badge(name) in text else [f"{name}: no Colab badge for {nav.badge_url}"]
    problems += [
        f"{name}: link to {target}, which does not exist"
        for target in RELATIVE_NOTEBOOK_LINK.findall(text)
        if not (directory / target).is_file()
    ]
    for kind, expected in (("Previous", nav.previous), ("Next", nav.next)):
        targets = [target for k, _, target in NAV_LINK.findall(text) if k == kind]
        if expected is not None and not targets:
            problems.append(f"{name}: no {kind} link (expected {expected})")
        for target in targets:
            if target != expected and (directory / target).is_file():
                problems.append(f"{name}: {kind} links to {target}, expected {expected or 'no link'}")
    return problems


def link_problems(directory: str | os.PathLike[str] = "notebooks") -> list[str]:
    """One line per problem in the notebooks' first markdown cells: a missing or wrong Colab badge, a relative
    link to a notebook that does not exist, or a previous/next link that is missing or not the neighbour."""
    root = _dir(directory)
    problems = []
    for nav in navigation(root):
        cell = _first_markdown(_read(root / nav.notebook))
        problems += _problems(cell.source, nav, root) if cell is not None else [f"{nav.notebook}: no markdown cell"]
    return problems


def _title_label(path: Path) -> str:
    """Fallback link text: the notebook's H1 up to its colon ("01 · Data prep")."""
    cell = _first_markdown(_read(path))
    heading = next(
        (line for line in (cell.source.splitlines() if cell else []) if line.startswith("# ")), f"# {path.stem}"
    )
    return heading[2:].split(":", 1)[0].strip()


def fix_navigation(directory: str | os.PathLike[str] = "notebooks") -> list[Path]:
    """Rewrite the badge-and-links line of every notebook that ``link_problems`` flags; returns the files changed.

    The line holding the Colab badge (or the first previous/next link) becomes
    ``badge · Previous: [label](file) · Next: [label](file)``; other badge/link lines in that cell are dropped,
    and the rest of the notebook is untouched. Link texts come from correct links to the same notebook,
    else from its title.
    """
    root = _dir(directory)
    navs = navigation(root)
    notebooks = {nav.notebook: _read(root / nav.notebook) for nav in navs}
    labels: dict[str, str] = {}  # link texts of the links that are right
    for nav in navs:
        cell = _first_markdown(notebooks[nav.notebook])
        for kind, label, target in NAV_LINK.findall(cell.source if cell else ""):
            if target == (nav.previous if kind == "Previous" else nav.next):
                labels.setdefault(target, label)
    changed = []
    for nav in navs:
        nb = notebooks[nav.notebook]
        cell = _first_markdown(nb)
        if cell is None or not _problems(cell.source, nav, root):
            continue
        links = [
            f"{kind}: [{labels.get(t) or _title_label(root / t)}]({t})"
            for kind, t in (("Previous", nav.previous), ("Next", nav.next))
            if t is not None
        ]
        line = " · ".join([colab_badge(nav.notebook), *links])
        lines = cell.source.split("\n")
        at = [i for i, old in enumerate(lines) if "colab-badge.svg" in old or NAV_LINK.search(old)]
        if at:
            lines = [line if i == at[0] else old for i, old in enumerate(lines) if i == at[0] or i not in at]
        else:
            lines += ["", line]
        cell.source = "\n".join(lines)
        _write_atomic(root / nav.notebook, _dumps(nb))
        changed.append(root / nav.notebook)
    return changed


# -- Colab -------------------------------------------------------------------------------------


def colab_install_command(checkout: str = "/content/ragcourse") -> str:
    """The Colab install as one shell line (what ``ragcourse.colab.install`` runs; for the instructor guide).

    The package goes in ``--no-deps``, then ``requirements-colab.txt``: only what Colab lacks, so Colab's torch, numpy
    and pandas stay (``scripts/colab_resolver_check.py`` proves it against Colab's package list).
    """
    from .colab import pip_commands

    return " && ".join(shlex.join(cmd) for cmd in pip_commands(Path(checkout)))


# -- the setup cell -----------------------------------------------------------------------------

SETUP_MARKER = "# Setup"


def setup_cell_source(checkout: str = "/content/ragcourse") -> str:
    """The first code cell of every notebook: on Colab, clone the course and run ``ragcourse.colab.setup``."""
    clone = ["git", "clone", "--depth=1", f"--branch={BRANCH}"]
    return "\n".join(
        [
            "# Setup (Colab only): fetch the course, install what Colab lacks, choose where outputs are kept.",
            "# Generated by `ragcourse setup-cells`; the same in every notebook.",
            "import os",
            "import subprocess",
            "import sys",
            "",
            'if "google.colab" in sys.modules:',
            f"    if not os.path.isdir({json.dumps(checkout)}):",
            f"        repo = {json.dumps(repository_url())}",
            f"        subprocess.run({json.dumps(clone)[:-1]}, repo, {json.dumps(checkout)}], check=True)",
            f"    sys.path.insert(0, {json.dumps(checkout)})",
            "    from ragcourse import colab",
            "",
            f"    colab.setup({json.dumps(checkout)})  # restarts the runtime once if pip replaced an imported package",
        ]
    )


def _setup_cell(nb: NotebookNode) -> NotebookNode | None:
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def setup_cell_problems(directory: str | os.PathLike[str] = "notebooks") -> list[str]:
    """One line per notebook whose first code cell is not the generated setup cell."""
    expected = setup_cell_source()
    problems = []
    for path in notebook_order(directory):
        cell = _setup_cell(_read(path))
        if cell is None or cell.source != expected:
            problems.append(f"{path.name}: the setup cell differs from the generated one (run: ragcourse setup-cells)")
    return problems


def write_setup_cells(directory: str | os.PathLike[str] = "notebooks") -> list[Path]:
    """Make every notebook's first code cell the generated setup cell; returns the notebooks changed.

    Only a first code cell that is a setup cell (starts with ``# Setup``) is replaced; a notebook without one gets it
    inserted before its first code cell.
    """
    import nbformat

    expected = setup_cell_source()
    changed = []
    for path in notebook_order(directory):
        nb = _read(path)
        cell = _setup_cell(nb)
        if cell is not None and cell.source == expected:
            continue
        if cell is not None and cell.source.startswith(SETUP_MARKER):
            cell.source = expected
        else:
            new = nbformat.v4.new_code_cell(expected)
            new.id = "setup"
            at = nb.cells.index(cell) if cell is not None else len(nb.cells)
            nb.cells.insert(at, new)
        _write_atomic(path, _dumps(nb))
        changed.append(path)
    return changed
