import subprocess
import sys
from pathlib import Path

import testenv

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_no_heavy_work():
    code = (
        "import sys, pkgutil, importlib, ragcourse\n"
        "for m in pkgutil.iter_modules(ragcourse.__path__): importlib.import_module('ragcourse.' + m.name)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'llama_index', 'ragas', 'datasets') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing ragcourse pulled in heavy libraries: {out}"


def test_cli_prints_config():
    out = subprocess.run(
        [sys.executable, "-m", "ragcourse.cli", "config", "--preset", "colab-t4", "--set", "training.max_steps=7"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "preset: colab-t4" in out and "max_steps: 7" in out


def test_cli_config_error_is_readable():
    res = subprocess.run(
        [sys.executable, "-m", "ragcourse.cli", "config", "--set", "lora.rank=4"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "Did you mean 'lora.r'" in res.stderr


def test_constraints_pin_cpu_torch():
    pins = testenv.pins(ROOT / "constraints-cpu.txt")
    assert pins["torch"] == "2.13.0"
    assert "torch" not in {line.split("==")[0] for line in (ROOT / "constraints-colab.txt").read_text().splitlines()}


def test_installed_versions_are_the_ones_this_environment_declares():
    """The CPU pins in ``make test``; Colab's snapshot (moved only where requirements-colab.txt pins) in the Colab twin;
    the floors in the floors environment. The declared versions come from the files that define the environment."""
    from importlib.metadata import version

    declared = testenv.declared_versions()
    names = [
        "torch",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "datasets",
        "llama-index-core",
        "ragas",
        "accelerate",
        "numpy",
        "pandas",
        "sentence-transformers",
    ]
    checked = {n: (version(n).split("+")[0], declared[n]) for n in names if n in declared}
    assert len(checked) >= 7, f"{testenv.environment()}: too few declared versions: {checked}"
    wrong = {n: v for n, v in checked.items() if v[0] != v[1]}
    assert not wrong, f"{testenv.environment()} environment: installed != declared: {wrong}"


def test_checkpointing_args_follow_the_installed_training_arguments(tmp_path):
    """One branch for transformers' two spellings (env.py): the installed one is accepted without a warning and turns
    checkpointing on where TRL reads it; each side of the branch is taken on its own ``TrainingArguments``."""
    import dataclasses
    import warnings

    from trl import SFTConfig

    from ragcourse.env import checkpointing_args

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **checkpointing_args(True))
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}

    @dataclasses.dataclass
    class Colab515:  # transformers 5.15: the old name only
        gradient_checkpointing: bool = False
        gradient_checkpointing_kwargs: dict | None = None

    @dataclasses.dataclass
    class Pinned524(Colab515):  # transformers 5.24: the new name, the old one a deprecated alias
        activation_checkpointing: bool | None = None
        activation_checkpointing_kwargs: dict | None = None

    assert checkpointing_args(False, Colab515) == {
        "gradient_checkpointing": False,
        "gradient_checkpointing_kwargs": None,
    }
    assert checkpointing_args(True, Pinned524) == {
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
    }


def test_environment_yml_uses_same_pins():
    text = (ROOT / "environment.yml").read_text()
    assert "constraints-gpu.txt" in text
    gpu = (ROOT / "constraints-gpu.txt").read_text()
    cpu = (ROOT / "constraints-cpu.txt").read_text()
    for name in ("transformers", "peft", "trl", "bitsandbytes"):
        line = next(pin for pin in cpu.splitlines() if pin.startswith(name + "=="))
        assert line in gpu
