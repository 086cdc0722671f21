"""User mistakes reach the command line as one `error:` message and exit status 2, not a traceback
(a raw exception would leave CliRunner with exit code 1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from tuneorprompt import cli
from tuneorprompt.cli import app


def write_config(tmp_path: Path, extra: dict, test_file: str = "test.jsonl") -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        rows = [{"id": f"{split}{i}", "input": f"{split} question {i}?", "target": "a"} for i in range(3)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    files = {"train": str(data / "train.jsonl"), "dev": str(data / "dev.jsonl"), "test": str(data / test_file)}
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps({"model": {"path": "m"}, "data": files, **extra}))
    return config


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and output with rich's line wrapping undone (it wraps at 120 columns off a terminal)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    "extra, overrides, named",
    [
        ({"generation": {"stop": [""]}}, [], "generation.stop: an empty stop string"),
        ({"seeds": [0, 0]}, [], "seeds: seed 0 is given more than once"),
        ({"generation": {"extract": "regex", "extract_regex": "(x"}}, [], "generation.extract_regex: '(x' is not"),
        ({"metric": {"accuracy": "regex", "regex": "(unclosed"}}, [], "metric.regex: '(unclosed'"),
        ({"name": "../../../x"}, [], "name: '../../../x' must be a plain folder name"),
        ({}, ["--set", "prompt.template=Q: {{ input }}"], "quote it as a YAML string"),
        ({"model": {"path": "m", "trust_remote_code": True}}, [], "model: trust_remote_code: true runs"),
    ],
)
def test_config_mistakes_exit_2_naming_the_key(tmp_path, extra, overrides, named):
    code, output = invoke("check-data", str(write_config(tmp_path, extra)), *overrides)
    assert code == 2, output
    assert output.startswith("error:") and named in output


def test_non_utf8_data_file_exits_2_naming_file_and_line(tmp_path):
    config = write_config(tmp_path, {}, test_file="test.csv")
    latin1 = tmp_path / "data" / "test.csv"
    latin1.write_bytes(b"id,input,target\nq1,Capital of S\xe3o Tom\xe9?,x\n")
    code, output = invoke("check-data", str(config))
    assert code == 2, output
    assert f"{latin1}:2: not UTF-8 text" in output


def test_init_into_a_missing_folder_exits_2(tmp_path):
    code, output = invoke("init", str(tmp_path / "no-such-folder" / "experiment.yaml"))
    assert code == 2
    assert output.startswith("error:") and "no-such-folder" in output


def test_an_error_quoting_escape_sequences_prints_them_escaped(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=200))
    with pytest.raises(typer.Exit):
        cli._fail(ValueError("the server said \x1b]0;pwned\x07\x1b[2J"))
    assert cli.console.file.getvalue() == "error: the server said \\x1b]0;pwned\\x07\\x1b[2J\n"



def template_config(tmp_path: Path, key: str, template: str) -> Path:
    """An experiment whose `key` template is `template`; model "m" does not exist, so an error about
    the template shows it came before any model was looked for."""
    return write_config(tmp_path, {"prompt": {key.split(".")[1]: template}, "arms": ["instruction"]})


@pytest.mark.parametrize(
    "key, template",
    [
        ("prompt.template", "{% for x in range(10**9) %}{% endfor %}Q: {{ input }}"),
        ("prompt.instruction_template", "{% for x in range(100000) %}{{ instruction }}{% endfor %}{{ prompt }}"),
    ],
    ids=["range-overflow", "instruction-template"],
)
def test_a_template_past_the_render_limits_is_refused_before_the_model_loads(tmp_path, key, template):
    code, output = invoke("check-data", str(template_config(tmp_path, key, template)))
    assert code == 2, output
    assert f"error: {key}: rendering exceeded " in output


@pytest.mark.parametrize(
    "template",
    ["{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}", "Q: {{ input * 10**9 }}"],
    ids=["nested-loops", "huge-value"],
)
def test_a_template_that_would_hang_or_fill_memory_is_refused_in_seconds(tmp_path, template):
    # In a process of its own, with a deadline: unbounded, the nested loops run for hours and the
    # repeated input takes 17 GB.
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "tuneorprompt.cli", "check-data", str(template_config(tmp_path, "prompt.template", template))],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("error: prompt.template: rendering exceeded ")
