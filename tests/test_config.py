from pathlib import Path

import pytest
import yaml

from tuneorprompt.config import (
    ConfigError,
    ExperimentConfig,
    FewShotArm,
    FineTuneArm,
    load_config,
)
from tuneorprompt.templates import EXAMPLE_CONFIG

BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl", "dev": "b.jsonl", "test": "c.jsonl"}}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_is_named(tmp_path):
    raw = {**BASE, "generation": {"max_new_token": 8}}
    with pytest.raises(ConfigError, match=r"generation\.max_new_token: unknown key"):
        load_config(write(tmp_path, raw))


def test_overrides_are_typed_and_nested(tmp_path):
    config = load_config(write(tmp_path, BASE), ["target.accuracy=0.9", 'generation.stop=["\\n", "."]'])
    assert config.target.accuracy == 0.9
    assert config.generation.stop == ["\n", "."]


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.data.train == tmp_path / "a.jsonl"
    assert config.model.path == "m"  # not a local directory: kept as a hub id


def test_arm_shorthand(tmp_path):
    raw = {**BASE, "arms": ["baseline", "lora+instruction", {"kind": "few_shot", "k": [2]}]}
    config = load_config(write(tmp_path, raw))
    assert config.arms[0].kind == "baseline"
    assert isinstance(config.arms[1], FineTuneArm) and config.arms[1].instruction
    assert config.arms[1].name == "lora+instruction"
    assert isinstance(config.arms[2], FewShotArm) and config.arms[2].k == [2]


def test_bad_values_are_reported_with_their_path(tmp_path):
    raw = {**BASE, "arms": [{"kind": "few_shot", "k": [0]}], "data": {"file": "x.jsonl", "train": "a.jsonl"}}
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, raw))
    assert "arms.0.few_shot.k" in str(error.value)
    assert "either `file`" in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_init_template_is_a_valid_config():
    config = ExperimentConfig.model_validate(yaml.safe_load(EXAMPLE_CONFIG))
    assert [a.kind for a in config.arms][:2] == ["baseline", "instruction"]


def test_shipped_example_configs_validate():
    root = Path(__file__).parent.parent
    shipped = list((root / "examples").rglob("*.yaml")) + list((root / "tuneorprompt" / "testbed").rglob("*.yaml"))
    assert shipped, "no example configs found"
    for path in shipped:
        load_config(path)
