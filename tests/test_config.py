import re
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
from tuneorprompt.example_config import EXAMPLE_CONFIG

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
    assert "arms.0.k" in str(error.value)
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


def test_init_template_documents_the_opt_in_model_keys():
    # Commented out in the template (both are off by default); uncommented they must be real keys.
    uncommented = EXAMPLE_CONFIG
    for key in ("allow_pickle", "trust_remote_code"):
        assert f"  # {key}: false" in uncommented
        uncommented = uncommented.replace(f"  # {key}: false", f"  {key}: false")
    model = ExperimentConfig.model_validate(yaml.safe_load(uncommented)).model
    assert "allow_pickle" in model.model_fields_set and "trust_remote_code" in model.model_fields_set


def test_shipped_example_configs_validate():
    root = Path(__file__).parent.parent
    shipped = list((root / "examples").rglob("*.yaml")) + list((root / "tuneorprompt" / "testbed").rglob("*.yaml"))
    assert shipped, "no example configs found"
    for path in shipped:
        load_config(path)


# ---- inputs that would silently spoil or misplace a run ----------------------------------------------


def config_error(tmp_path: Path, raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, raw), overrides)
    return str(caught.value)


def test_empty_stop_string_is_refused(tmp_path):
    # "" is in every text: each completion would be cut to nothing and every arm would score 0.
    message = config_error(tmp_path, {**BASE, "generation": {"stop": ["\n", ""]}})
    assert "generation.stop: an empty stop string" in message


def test_repeated_seed_is_named(tmp_path):
    message = config_error(tmp_path, {**BASE, "seeds": [3, 1, 3]})
    assert "seeds: seed 3 is given more than once" in message


@pytest.mark.parametrize(
    "section, key",
    [({"generation": {"extract": "regex", "extract_regex": "(unclosed"}}, "generation.extract_regex"),
     ({"metric": {"accuracy": "regex", "regex": "(unclosed"}}, "metric.regex")],
)
def test_invalid_regex_is_a_config_error_naming_the_key(tmp_path, section, key):
    message = config_error(tmp_path, {**BASE, **section})
    assert f"{key}: '(unclosed' is not a valid regular expression: missing )" in message


@pytest.mark.parametrize("name", ["../../../x", "/tmp/x", "runs/x", "a\\b", "", " ", ".", ".."])
def test_run_name_must_be_a_plain_folder_name(tmp_path, name):
    assert "name: " in config_error(tmp_path, {**BASE, "name": name})


@pytest.mark.parametrize("rate", [-1, 0, float("inf"), float("nan")])
def test_learning_rate_must_be_positive_and_finite(tmp_path, rate):
    # Refused with the config, before the run directory exists; YAML writes the last two as .inf and .nan.
    message = config_error(tmp_path, {**BASE, "arms": ["baseline", {"kind": "lora", "learning_rates": [1e-4, rate]}]})
    assert re.search(r"arms\.1\.learning_rates\.1: Input should be (greater than 0|a finite number)", message)


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\tb", "a\x1b]0;title\x07", "a\x00b", "a\u202eb"])
def test_run_name_must_hold_no_control_characters(tmp_path, name):
    # Each would become part of the folder runs/<name>; the message quotes it escaped.
    message = config_error(tmp_path, {**BASE, "name": name})
    assert f"\n  name: {name!r} must hold only printable characters" in message


def test_run_name_may_hold_dots_and_dashes(tmp_path):
    assert load_config(write(tmp_path, {**BASE, "name": "capitals-v1.2"})).name == "capitals-v1.2"


def test_override_value_that_is_not_yaml_suggests_quoting(tmp_path):
    message = config_error(tmp_path, BASE, ["prompt.template=Q: {{ input }}"])
    assert message.startswith("override 'prompt.template=Q: {{ input }}': the value is not valid YAML")
    assert """--set 'prompt.template="Q: {{ input }}"'""" in message
    # The suggestion works: quoted, the value is taken literally.
    assert load_config(write(tmp_path, BASE), ['prompt.template="Q: {{ input }}"']).prompt.template == "Q: {{ input }}"


@pytest.mark.parametrize(
    "override, complaint",
    [("target.accuracy.x=1", "'accuracy' is not a mapping"), ("seeds.first=1", "'seeds' is not a mapping"),
     ("target..accuracy=1", "the key path 'target..accuracy' has an empty part"),
     ("=1", "the key path '' has an empty part")],
)
def test_override_paths_that_cannot_be_followed_are_named(tmp_path, override, complaint):
    message = config_error(tmp_path, {**BASE, "seeds": [0], "target": {"accuracy": 0.8}}, [override])
    assert message == f"override {override!r}: {complaint}"


@pytest.mark.parametrize("revision", [None, "main", "v1.0", "abc123"])
def test_trust_remote_code_needs_a_pinned_commit(tmp_path, revision):
    raw = {**BASE, "model": {"path": "m", "trust_remote_code": True, "revision": revision}}
    assert "model: trust_remote_code: true runs the model repository's Python code" in config_error(tmp_path, raw)


def test_trust_remote_code_with_a_commit_and_safe_defaults(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    raw = {**BASE, "model": {"path": "m", "trust_remote_code": True, "revision": commit}}
    assert load_config(write(tmp_path, raw)).model.trust_remote_code
    default = load_config(write(tmp_path, BASE)).model
    assert not default.allow_pickle and not default.trust_remote_code
