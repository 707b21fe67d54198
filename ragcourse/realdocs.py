"""A folder of real documentation that nobody on this course wrote, built from files already installed.

Used to test "adapt to your domain" and to measure retrieval on text the course was not tuned for: the long
descriptions (README files) that installed Python packages carry in their metadata, as Markdown files.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

DEFAULT_PACKAGES = (
    "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "llama-index-core", "ragas",
    "sentence-transformers", "safetensors", "tokenizers", "huggingface-hub", "pandas", "rapidfuzz", "datasketch",
    "pypdf", "nbval", "pytest", "tqdm", "bm25s",
)


def build_real_docs(dest: Path, packages: tuple[str, ...] = DEFAULT_PACKAGES, min_words: int = 150) -> list[Path]:
    """Write each installed package's README (from its metadata) to ``dest/<package>.md``; returns the files."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in packages:
        try:
            meta = importlib.metadata.metadata(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        body = meta.get_payload() or meta.get("Description") or ""
        body = re.sub(r"<[^>]+>", " ", str(body))  # drop embedded HTML (badges, logos)
        if len(body.split()) < min_words:
            continue
        path = dest / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.md"
        title = f"# {meta.get('Name', name)}: {meta.get('Summary', '')}".strip()
        path.write_text(f"{title}\n\n{body.strip()}\n", encoding="utf-8")
        written.append(path)
    return written
