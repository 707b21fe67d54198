import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_no_heavy_work():
    code = (
        "import sys, pkgutil, importlib, ragcourse\n"
        "for m in pkgutil.iter_modules(ragcourse.__path__): importlib.import_module('ragcourse.' + m.name)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'llama_index', 'ragas', 'datasets') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing ragcourse pulled in heavy libraries: {out}"


def test_cli_prints_config():
    out = subprocess.run([sys.executable, "-m", "ragcourse.cli", "config", "--preset", "colab-t4",
                          "--set", "training.max_steps=7"], capture_output=True, text=True, check=True).stdout
    assert "preset: colab-t4" in out and "max_steps: 7" in out


def test_cli_config_error_is_readable():
    res = subprocess.run([sys.executable, "-m", "ragcourse.cli", "config", "--set", "lora.rank=4"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Did you mean 'lora.r'" in res.stderr


def test_constraints_pin_cpu_torch():
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints-cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0"
    assert "torch" not in {l.split("==")[0] for l in (ROOT / "constraints-colab.txt").read_text().splitlines()}
    # every pinned course library is the version installed here (the constraints are what was tested)
    from importlib.metadata import version
    for name in ("transformers", "peft", "trl", "bitsandbytes", "datasets", "llama-index-core", "ragas"):
        assert version(name) == pins[name], name


def test_environment_yml_uses_same_pins():
    text = (ROOT / "environment.yml").read_text()
    assert "constraints-gpu.txt" in text
    gpu = (ROOT / "constraints-gpu.txt").read_text()
    cpu = (ROOT / "constraints-cpu.txt").read_text()
    for name in ("transformers", "peft", "trl", "bitsandbytes"):
        line = next(l for l in cpu.splitlines() if l.startswith(name + "=="))
        assert line in gpu
