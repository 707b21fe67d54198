import pytest

from ragcourse.config import ConfigError, available_presets, load_config, parse_overrides, print_config


def test_presets_all_load():
    presets = available_presets()
    assert {"cpu-smoke", "colab-t4", "gpu-24gb", "gpu-80gb"} <= set(presets)
    for name in presets:
        cfg = load_config(name)
        assert cfg.preset == name
        assert cfg.expected.peak_memory_gb > 0 and cfg.expected.total_minutes > 0


def test_cpu_smoke_uses_embedded_models():
    cfg = load_config("cpu-smoke")
    assert cfg.model.name.startswith("embedded:") and cfg.embedding.name.startswith("embedded:")


def test_t4_has_no_bf16():
    cfg = load_config("colab-t4")
    assert cfg.quantization.bnb_4bit_compute_dtype == "float16" and cfg.model.attn_implementation == "sdpa"


def test_layers_override_in_order(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  corpus_dir: /docs/mine\ntraining:\n  learning_rate: 5e-4\n")
    cfg = load_config("cpu-smoke", user, training={"learning_rate": 1e-5})
    assert cfg.data.corpus_dir == "/docs/mine"
    assert cfg.training.learning_rate == 1e-5
    assert load_config("cpu-smoke", user).training.learning_rate == 5e-4  # "5e-4" (a YAML string) read as a number


def test_unknown_key_names_nearest(tmp_path):
    user = tmp_path / "typo.yaml"
    user.write_text("lora:\n  rank: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config("cpu-smoke", user)
    assert "lora.rank" in str(err.value) and "typo.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'training.learning_rate'"):
        load_config("cpu-smoke", training={"learnig_rate": 1e-4})


def test_unknown_section_and_bad_type(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'model'"):
        load_config("cpu-smoke", modle={"name": "x"})
    with pytest.raises(ConfigError, match="training.max_steps must be an integer"):
        load_config("cpu-smoke", training={"max_steps": "many"})


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'cpu-smoke'"):
        load_config("cpu-smok")


def test_preset_from_environment_and_user_file(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGCOURSE_PRESET", "colab-t4")
    assert load_config().preset == "colab-t4"
    monkeypatch.delenv("RAGCOURSE_PRESET")
    user = tmp_path / "u.yaml"
    user.write_text("preset: gpu-24gb\n")
    assert load_config(user_config=user).preset == "gpu-24gb"


def test_invalid_values_are_explained():
    with pytest.raises(ConfigError, match="split_fractions"):
        load_config("cpu-smoke", data={"split_fractions": [0.5, 0.5, 0.5]})


def test_bad_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config("cpu-smoke", bad)


def test_parse_overrides_and_print(capsys):
    assert parse_overrides(["training.max_steps=5", "lora.target_modules=[q_proj]"]) == {
        "training": {"max_steps": 5},
        "lora": {"target_modules": ["q_proj"]},
    }
    cfg = load_config("cpu-smoke", **parse_overrides(["training.max_steps=5"]))
    print_config(cfg)
    out = capsys.readouterr().out
    assert "preset: cpu-smoke" in out and "max_steps: 5" in out


def test_artifact_paths_are_per_preset():
    cfg = load_config("cpu-smoke")
    assert cfg.artifact_dir("adapter").parts[-2:] == ("cpu-smoke", "adapter")
