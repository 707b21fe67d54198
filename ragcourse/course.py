"""Facts about the course itself: where it lives and its notebook sequence (README, badges, links)."""

from __future__ import annotations

from pathlib import Path

# The one place the repository's address is configured (Colab badges, setup cells, README).
REPOSITORY = "ragcourse/ragcourse"
BRANCH = "main"


def notebook_files(root: Path) -> list[Path]:
    """The course notebooks in order (``notebooks/NN_name.ipynb``)."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def repository_url() -> str:
    """The address a Colab setup cell clones (``git clone --depth=1 --branch BRANCH``)."""
    return f"https://github.com/{REPOSITORY}"


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"
