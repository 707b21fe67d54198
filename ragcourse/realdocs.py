"""A folder of real documentation that nobody on this course wrote, built from files already installed.

Used to test "adapt to your domain" and to measure retrieval on text the course was not tuned for: the long
descriptions (README files) that installed Python packages carry in their metadata, as Markdown files. The second
half makes evaluation queries from that text without an LLM (an identifier plus a few words of its sentence), with
the chunks that answer them, for benchmarks/retrieval_quality.py and tests/test_retrieval_real_docs.py.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import random

    from llama_index.core import Document
    from llama_index.core.schema import TextNode

DEFAULT_PACKAGES = (
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "llama-index-core",
    "ragas",
    "sentence-transformers",
    "safetensors",
    "tokenizers",
    "huggingface-hub",
    "pandas",
    "rapidfuzz",
    "datasketch",
    "pypdf",
    "nbval",
    "pytest",
    "tqdm",
    "bm25s",
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


# -- evaluation queries made from the documentation itself (benchmarks/retrieval_quality.py) -----------------

CODE_SPAN = re.compile(r"``?([^`\s][^`\n]{0,58}[^`\s])``?(?!_)")  # not an RST link (`text <url>`__)
BARE_IDENTIFIER = re.compile(
    r"(?<![\w./`:-])(--[a-z][a-z0-9]+(?:[-_][a-z0-9]+)*|[a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w/`:-])"
)
IDENTIFIER = re.compile(r"--[a-z][\w-]+|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?")
_PROSE_WORD = re.compile(r"[(\"']?[A-Za-z][A-Za-z'-]*[,.;:!?)\"']*")
_NOT_PROSE = (">>>", "$ ", "|", ".. ", "<", "- [", "[!", "> [!")
_BULLET = re.compile(r"\s*(?:[-*+]|\d+[.)])\s+")


def _list_items(lines: list[str]) -> list[str]:
    """A Markdown list as one text per item (continuation lines joined to their item)."""
    items: list[str] = []
    for line in lines:
        if _BULLET.match(line) or not items:
            items.append(_BULLET.sub("", line, count=1))
        else:
            items[-1] += " " + line.strip()
    return items


def is_identifier(name: str) -> bool:
    """A name a user would type exactly: a CLI flag, snake_case, a dotted path or camelCase/CamelCase with a hump
    (``update()`` is left out: a plain English word, not a test of exact matching)."""
    return (
        len(name) >= 4
        and bool(IDENTIFIER.fullmatch(name))
        and bool(name.startswith("--") or re.search(r"_|\w\.\w|[a-z][A-Z]", name.removesuffix("()")))
    )


def _without_links(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # images (badges)
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # a link: its text only


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", _without_links(text).lower()))


def prose_sentences(text: str, min_words: int = 8, max_words: int = 50) -> list[str]:
    """Sentences of running text (list items and table rows count as sentences; links keep their text); code
    blocks, headings, shell prompts and URLs left out."""
    from .prompts import sentences

    text = _without_links(re.sub(r"```.*?```", "\n\n", text, flags=re.S))
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [
            line
            for line in para.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and not re.fullmatch(r"\s*[=~^*|:-]{3,}\s*", line)
        ]
        if lines and all(line.lstrip().startswith("|") for line in lines):  # a table: one text per row
            units = [" — ".join(c.strip() for c in row.strip().strip("|").split("|")) for row in lines[1:]]
        elif not lines or any(line.startswith("    ") or line.lstrip().startswith(_NOT_PROSE) for line in lines):
            continue
        else:
            units = _list_items(lines) if _BULLET.match(lines[0]) else [" ".join(lines)]
        for s in (s for unit in units for s in sentences(unit)):
            words = s.split()
            prose = sum(bool(_PROSE_WORD.fullmatch(w)) for w in words) / max(len(words), 1)
            if min_words <= len(words) <= max_words and prose >= 0.6 and "http" not in s and "](" not in s:
                out.append(s)
    return out


def sentence_identifiers(sentence: str) -> list[str]:
    """Identifiers in a sentence: those inside inline code spans, then bare snake_case names and CLI flags."""
    found = [name for span in CODE_SPAN.findall(sentence) for name in IDENTIFIER.findall(span) if is_identifier(name)]
    found += [m for m in BARE_IDENTIFIER.findall(CODE_SPAN.sub(" ", sentence)) if is_identifier(m)]
    return list(dict.fromkeys(found))


def identifier_query(
    identifier: str, sentence: str, rng: "random.Random", min_words: int = 3, max_words: int = 6
) -> str | None:
    """What a user would type: the identifier plus 3–6 content words of the sentence, in their order (None if too
    few)."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    name = identifier.removesuffix("()")
    words = [w.lower() for w in re.findall(r"[A-Za-z][a-z]{3,}", CODE_SPAN.sub(" ", sentence))]
    words = [w for w in dict.fromkeys(words) if w not in STOPWORDS_EN_PLUS and w not in name.lower()]
    if len(words) < min_words:
        return None
    picked = sorted(rng.sample(range(len(words)), rng.randint(min_words, min(max_words, len(words)))))
    return " ".join([name, *(words[i] for i in picked)])


def identifier_queries(
    docs: Sequence["Document"], n: int = 200, per_doc: int = 25, per_identifier: int = 3, seed: int = 0
) -> list[dict]:
    """Evaluation queries made reproducibly without an LLM, from identifiers in prose sentences: at most
    ``per_identifier`` sentences per identifier and ``per_doc`` queries per document, then ``n`` in all, sampled
    with ``seed``. Each item: question (the query), identifier, sentence, doc_id. Which chunks are relevant depends
    on the chunking: :func:`locate_identifier_queries` decides it."""
    import random

    rng = random.Random(seed)
    by_doc: dict[str, list[dict]] = {}
    uses: dict[str, int] = {}
    for doc in docs:
        doc_id = doc.metadata.get("doc_id", doc.doc_id)
        for sentence in prose_sentences(doc.text):
            for name in (i.removesuffix("()") for i in sentence_identifiers(sentence)):
                query = identifier_query(name, sentence, rng) if uses.get(name, 0) < per_identifier else None
                if query:
                    uses[name] = uses.get(name, 0) + 1
                    by_doc.setdefault(doc_id, []).append(
                        {"question": query, "identifier": name, "sentence": sentence, "doc_id": doc_id}
                    )
    pool = [
        item for items in by_doc.values() for item in (rng.sample(items, per_doc) if len(items) > per_doc else items)
    ]
    return rng.sample(pool, n) if len(pool) > n else pool


def locate_identifier_queries(items: Sequence[dict], chunks: Sequence["TextNode"], min_ratio: float = 90) -> list[dict]:
    """Copies of ``items`` with ``oracle_ids``: the chunks holding the identifier *and* the sentence it came from
    (compared word by word, ignoring markup and link targets, fuzzily: ``partial_ratio`` ≥ ``min_ratio``, so a
    sentence cut by a chunk boundary still counts where most of it is). Items that no chunk holds are left out."""
    from rapidfuzz import fuzz

    texts = [(c.node_id, c.get_content(), _words(c.get_content())) for c in chunks]
    out = []
    for item in items:
        sentence = _words(item["sentence"])
        ids = [
            nid
            for nid, raw, norm in texts
            if item["identifier"] in raw and fuzz.partial_ratio(sentence, norm) >= min_ratio
        ]
        if ids:
            out.append({**item, "oracle_ids": ids})
    return out


def write_reference_qa(docs: Sequence["Document"], dest: Path, n: int = 60, seed: int = 0) -> Path:
    """Curated-style Q&A (``data/README.md`` schema) made from the documentation without an LLM, for running the whole
    pipeline on it (``ragcourse run-all`` in tests): each pair asks what the docs say about one identifier, with its
    sentence as the reference answer and supporting passage, and the identifier as the key fact."""
    import json

    dest.mkdir(parents=True, exist_ok=True)
    titles = {d.metadata.get("doc_id", d.doc_id): d.metadata.get("title", "") for d in docs}
    lines = []
    for i, item in enumerate(identifier_queries(docs, n=n, seed=seed)):
        title = titles.get(item["doc_id"]) or item["doc_id"]
        lines.append(
            json.dumps(
                {
                    "id": f"real-{i:03d}",
                    "type": "factual",
                    "question": f"What does the {title.split(':')[0]} documentation say about `{item['identifier']}`?",
                    "answer": item["sentence"],
                    "key_fact": item["identifier"],
                    "doc_ids": [item["doc_id"]],
                    "supporting_passages": [item["sentence"]],
                }
            )
        )
    path = dest / "reference.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
