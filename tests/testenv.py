"""Which tested environment runs these tests, and the versions it declares (README, "Tested with").

* ``cpu``: the course's own pins (``constraints-cpu.txt``), installed by ``make test``;
* ``colab-twin``: Colab's preloaded versions (``constraints/colab-snapshot.txt``) moved only where
  ``requirements-colab.txt`` pins a package (``scripts/colab_twin.py``, ``make colab-twin``);
* ``floors``: the lowest versions ``pyproject.toml`` allows (``scripts/floors_env.py``).

The twin and the floors environment leave a manifest in their virtual environment; the declared versions are read
from the files that define each environment, never from what is installed, so an environment cannot drift unseen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = {"colab-twin": "ragcourse-twin.json", "floors": "ragcourse-floors.json"}


def manifest(name: str) -> dict | None:
    """The manifest of environment ``name`` when this interpreter runs in it, else None."""
    path = Path(sys.prefix) / MANIFESTS[name]
    return json.loads(path.read_text()) if path.is_file() else None


def environment() -> str:
    """``colab-twin``, ``floors`` or ``cpu``."""
    return next((name for name in MANIFESTS if manifest(name) is not None), "cpu")


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements/constraints file: {canonical name: version}."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = str(req.specifier)
        if spec.startswith("==") and "," not in spec:
            out[canonicalize_name(req.name)] = spec[2:]
    return out


def colab_snapshot() -> dict[str, str]:
    """Colab's preloaded versions (public part: ``2.11.0+cu128`` -> ``2.11.0``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import colab_resolver_check as resolver
    finally:
        sys.path.pop(0)
    return {n: Version(v).public for n, v in resolver.read_snapshot(resolver.SNAPSHOT).items()}


def colab_moves() -> set[str]:
    """The preloaded packages ``requirements-colab.txt`` names (the only ones the setup cell may move)."""
    return {
        canonicalize_name(Requirement(line.split(" #", 1)[0].strip()).name)
        for line in (ROOT / "requirements-colab.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }


def declared_versions() -> dict[str, str]:
    """{canonical name: version} this environment declares for the packages it pins exactly."""
    env = environment()
    if env == "colab-twin":
        return colab_snapshot() | pins(ROOT / "requirements-colab.txt")
    if env == "floors":
        return {canonicalize_name(n): v for n, v in manifest("floors")["versions"].items()}
    return pins(ROOT / "constraints-cpu.txt")
