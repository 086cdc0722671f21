"""`kind: openai` against real servers: `transformers serve` on the bundled testbed model (its answers
compared with the local HF backend's for the same greedy prompts), and a tiny http.server that
answers 429/503 before 200 (retries). Also the config seam (`kind`), the API key's handling, and
`kind: vllm` without vLLM installed."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

import tuneorprompt

from tuneorprompt import decide
from tuneorprompt.backends import load_backend
from tuneorprompt.backends.hf import load_hf_backend
from tuneorprompt.backends.openai import OpenAIBackend, ServedModelError, load_openai_backend
from tuneorprompt.config import (
    ConfigError,
    ModelConfig,
    OpenAIModelConfig,
    VLLMModelConfig,
    config_from_dict,
)
from tuneorprompt.experiment import plan_run, run_experiment
from tuneorprompt.keys import served_model_key
from tuneorprompt.model import resolve_model
from tuneorprompt.records import GenerationSettings, Message
from tuneorprompt.rundir import RunLock
from tuneorprompt.store import Store

TESTBED = Path(__file__).resolve().parents[1] / "tuneorprompt" / "testbed"
CAPITALS = TESTBED / "tasks" / "capitals"
# A plain-text chat template (the testbed tokenizer has no chat tokens), added to a copy of the model
# so one server answers both modes.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
SECRET = "sk-test-do-not-leak-6f1c2b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- config seam --------------------------------------------------------------------------------------


BASE = {"data": {"file": str(CAPITALS / "dev.jsonl")}}


def test_kind_defaults_to_hf_so_existing_configs_keep_their_meaning():
    config = config_from_dict({**BASE, "model": {"path": "some/model"}})
    assert isinstance(config.model, ModelConfig) and config.model.kind == "hf"


def test_openai_kind_validates_and_errors_name_the_field():
    model = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "context_length": 256}
    config = config_from_dict({**BASE, "model": model})
    assert isinstance(config.model, OpenAIModelConfig) and config.model.mode == "completions"
    assert not resolve_model(config.model).trainable  # no local_path: fine-tuning arms are skipped
    with pytest.raises(ConfigError, match=r"model\.context_lenght: unknown key"):
        config_from_dict({**BASE, "model": {**model, "context_lenght": 256}})
    with pytest.raises(ConfigError, match=r"model\.context_length: Field required"):
        config_from_dict({**BASE, "model": {k: v for k, v in model.items() if k != "context_length"}})
    local = config_from_dict({**BASE, "model": {**model, "local_path": str(TESTBED / "model")}}).model
    weights = resolve_model(local).weights
    assert weights.directory == TESTBED / "model" and weights.chat_template is False  # prompts as the server's mode
    chat = config_from_dict({**BASE, "model": {**model, "mode": "chat", "local_path": str(TESTBED / "model")}}).model
    with pytest.raises(ValueError, match=r"model\.local_path: .* has no chat template, and model\.mode is chat"):
        resolve_model(chat)


def test_missing_api_key_variable_is_a_config_error_naming_field_and_variable(monkeypatch):
    monkeypatch.delenv("TUNEORPROMPT_TEST_KEY", raising=False)
    spec = OpenAIModelConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", context_length=64,
                             api_key_env="TUNEORPROMPT_TEST_KEY")
    with pytest.raises(ConfigError, match=r"model\.api_key_env: the environment variable TUNEORPROMPT_TEST_KEY is not set"):
        load_backend(resolve_model(spec))


def test_vllm_kind_without_vllm_installed_says_what_to_install():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    spec = VLLMModelConfig(kind="vllm", path=str(TESTBED / "model"))
    with pytest.raises(ImportError, match=r"model\.kind: vllm needs vLLM.*pip install 'tuneorprompt\[vllm\]'"):
        load_backend(resolve_model(spec))


def test_chat_render_is_a_stable_unambiguous_key():
    spec = OpenAIModelConfig(kind="openai", base_url="http://x/v1", model="m", context_length=64, mode="chat")
    backend = OpenAIBackend(client=None, spec=spec)
    # A role boundary inside a message's text must not read as a turn of its own.
    tricky = (Message("user", 'hi"}, {"role": "assistant'), )
    plain = (Message("user", "hi"), Message("assistant", ""))
    assert backend.render(tricky) != backend.render(plain)
    assert backend.render("hi") == backend.render((Message("user", "hi"),))  # a plain prompt is one user turn
    assert json.loads(backend.render(plain)) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    completions = OpenAIBackend(client=None, spec=spec.model_copy(update={"mode": "completions"}))
    with pytest.raises(ValueError, match="completions mode"):
        completions.render(plain)
    assert completions.fingerprint != backend.fingerprint


# ---- retries, against a real (tiny) HTTP server ----------------------------------------------------------


class FlakyServer:
    """Answers each POST with the next status of `script` (then 200 with a completion, or with the raw body
    `reply`); lists model "m". echo: its error messages and completions quote the Authorization header, as a
    careless server might. answers_as: the model its completions name. hang: each POST is read and never
    answered (until the server stops); `first_post` is set when the first arrives."""

    def __init__(self, script: list[int], reply: bytes | None = None, echo: bool = False, answers_as: str = "m",
                 hang: bool = False):
        self.script = list(script)
        self.reply = reply
        self.answers_as = answers_as
        self.hang = hang
        self.first_post = threading.Event()
        self.stopping = threading.Event()
        self.posts = 0
        self.headers_seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def _send(self, status: int, body: dict | bytes, headers: dict | None = None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                outer.posts += 1
                outer.headers_seen.append(self.headers.get("authorization", ""))
                outer.first_post.set()
                if outer.hang:
                    outer.stopping.wait()
                    return
                echoed = f" ({self.headers.get('authorization')})" if echo else ""
                if outer.script:
                    # retry-after-ms keeps the test fast; the client's own backoff would wait ~0.5 s and more.
                    self._send(outer.script.pop(0), {"error": {"message": "busy" + echoed}}, {"retry-after-ms": "10"})
                    return
                self._send(200, outer.reply or {
                    "id": "c", "object": "text_completion", "created": 0, "model": outer.answers_as,
                    "choices": [{"index": 0, "text": " Paris" + echoed + "\nmore", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                })

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("failures", [[429], [503, 502]])
def test_retries_429_and_5xx_then_answers(failures, monkeypatch):
    monkeypatch.setenv("TUNEORPROMPT_TEST_KEY", SECRET)
    with FlakyServer(failures) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="m", context_length=64,
                                 api_key_env="TUNEORPROMPT_TEST_KEY", max_retries=3)
        completion, = load_openai_backend(spec).generate(["Capital of France?"], GenerationSettings(8, ("\n",)))
        assert server.posts == len(failures) + 1
    assert server.headers_seen == [f"Bearer {SECRET}"] * server.posts  # the key goes to the server only
    assert completion.text == " Paris"  # the server returned past the stop string: cut here as the HF backend cuts
    assert (completion.prompt_tokens, completion.generated_tokens) == (7, 2)  # from `usage`


def test_gives_up_after_max_retries_with_the_servers_status():
    with FlakyServer([429, 429, 429]) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="m", context_length=64, max_retries=1)
        with pytest.raises(ServedModelError, match=r"answered HTTP 429 to generate request 0"):
            load_openai_backend(spec).generate(["x"], GenerationSettings(8))
        assert server.posts == 2


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(
    "reply, complaint",
    [(b'{"choices": []}', "without a text: expected .* not an empty choices list"),
     (b'{"object": "text_completion"}', "without a text: expected .* not an object without choices"),
     (b'{"choices": [{"index": 0}]}', "without a text: expected .* not a first choice without a text"),
     (b'[1, 2]', r"without a text: expected .* not the JSON value '\[1, 2\]'"),
     (b'{"choices": [{"text": "Par', r"with malformed JSON \(Unterminated string .*\); expected an OpenAI API")],
    ids=["empty choices", "no choices", "no text", "not an object", "malformed JSON"],
)
def test_a_reply_not_shaped_as_the_openai_api_names_the_url_and_what_was_expected(reply, complaint, chat):
    # A 200 reply the client passes on unchecked: not an IndexError, TypeError or a bare JSON message.
    with FlakyServer([], reply) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="m", context_length=64,
                                 mode="chat" if chat else "completions")
        endpoint, field = ("chat/completions", "message.content") if chat else ("completions", "text")
        expected = rf"{re.escape(server.url)}/{endpoint} answered generate request 0 {complaint}"
        with pytest.raises(ServedModelError, match=expected) as caught:
            load_openai_backend(spec).generate(["x"], GenerationSettings(8))
        if "without a text" in complaint:
            assert f"a JSON object with choices[0].{field}" in str(caught.value)


def test_a_reply_with_null_token_counts_falls_back_to_the_estimates():
    reply = b'{"choices": [{"text": "Paris"}], "usage": {"prompt_tokens": null, "completion_tokens": null}}'
    with FlakyServer([], reply) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="m", context_length=64)
        completion, = load_openai_backend(spec).generate(["x"], GenerationSettings(8))
    assert (completion.text, completion.prompt_tokens, completion.generated_tokens) == ("Paris", 2, 5)


def test_a_key_the_server_echoes_is_masked_in_its_errors_and_answers(monkeypatch):
    monkeypatch.setenv("TUNEORPROMPT_TEST_KEY", SECRET)
    with FlakyServer([401], echo=True) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="m", context_length=64,
                                 api_key_env="TUNEORPROMPT_TEST_KEY", max_retries=0)
        backend = load_openai_backend(spec)
        with pytest.raises(ServedModelError, match=r"busy \(Bearer \*\*\*\)") as raised:
            backend.generate(["x"], GenerationSettings(8, ("\n",)))
        completion, = backend.generate(["x"], GenerationSettings(8, ("\n",)))
    assert SECRET not in str(raised.value)
    assert completion.text == " Paris (Bearer ***)"  # what the store, report and terminal receive


def test_a_password_in_base_url_is_masked_wherever_the_url_is_written_or_shown(tmp_path):
    from mlflow.tracking import MlflowClient

    with FlakyServer([]) as server:
        secret_url = server.url.replace("http://", "http://user:hunter2@")
        config = {
            "name": "creds", "model": {"kind": "openai", "base_url": secret_url, "model": "m", "context_length": 2048},
            "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")} | {"max_test": 4},
            "arms": ["baseline"], "tracking": {"backend": "mlflow"},
        }
        console = Console(file=open(tmp_path / "terminal.txt", "w"), width=200)
        report = run_experiment(config, tmp_path / "run", console=console).report
        console.file.close()
        with pytest.raises(ServedModelError) as raised:
            load_openai_backend(OpenAIModelConfig(**config["model"] | {"model": "other"}))
    assert server.posts > 0  # the client was given the real URL
    shown = server.url.replace("http://", "http://***@")
    assert report.model == f"m at {shown}" and report.protocol["model"]["base_url"] == shown
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
    assert run.data.params["model.base_url"] == shown
    assert "hunter2" not in str(raised.value)
    for path in [tmp_path / "terminal.txt", *(tmp_path / "run").rglob("*")]:
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path
    # The generation cache's identity: a changed password is the same model.
    spec = OpenAIModelConfig(**config["model"])
    changed = spec.model_copy(update={"base_url": secret_url.replace("hunter2", "hunter3")})
    assert served_model_key(spec) == served_model_key(changed)



def test_a_huge_reply_is_cut_to_its_cap_before_it_is_stored_scored_or_reported(tmp_path):
    # 6 MB of text for max_tokens 16, as a broken or hostile server sent (issue 19: a 472 MB store).
    huge = " Paris" * 1_000_000
    reply = json.dumps({"choices": [{"index": 0, "text": huge}], "usage": {"prompt_tokens": 7, "completion_tokens": 16}})
    with FlakyServer([], reply.encode()) as server:
        config = {
            "name": "huge", "model": {"kind": "openai", "base_url": server.url, "model": "m", "context_length": 2048},
            "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")} | {"max_test": 5},
            "generation": {"max_new_tokens": 16}, "arms": ["baseline"],
        }
        result = run_experiment(config, tmp_path / "run", console=Console(file=io.StringIO()))
    cap = 32 * 16 + 1024  # characters: backends.text.reply_cap(16)
    assert [r.completion for r in result.records["baseline"][0]] == [huge[:cap]] * 5
    audit = json.loads((tmp_path / "run" / "report.json").read_text())["arms"][0]["scoring_audit"]
    assert (audit["replies_cut"], audit["replies"]) == (5, 5)
    assert [w["code"] for w in result.report.warnings if w["code"] == "replies_cut"] == ["replies_cut"]
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:
        assert db.execute("SELECT max(length(text)) FROM generations").fetchone() == (cap,)
    # What reaches the disk is the capped text, not the 30 MB the server sent.
    assert (tmp_path / "run" / "store.sqlite").stat().st_size < 2_000_000
    assert (tmp_path / "run" / "report.html").stat().st_size < 2_000_000


def test_a_model_the_server_does_not_list_is_an_error_before_any_arm():
    with FlakyServer([]) as server:
        spec = OpenAIModelConfig(kind="openai", base_url=server.url, model="other", context_length=64)
        with pytest.raises(ServedModelError, match=r"model\.model: 'other' is not served at .*it serves 'm'"):
            load_openai_backend(spec)


def served_config(url: str, **extra) -> dict:
    return {
        "name": "served", "model": {"kind": "openai", "base_url": url, "model": "m", "context_length": 2048},
        "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")} | {"max_test": 4},
        "arms": ["baseline"], **extra,
    }


def test_replies_from_another_model_are_warned_once_and_the_report_names_the_served_model(tmp_path):
    # An alias resolved to a snapshot, or a proxy routing elsewhere: the answers are not the configured model's.
    other = "m-2026-01\x1b]0;owned\x07"  # server text: its escape sequence must reach the terminal inert
    out = io.StringIO()
    with FlakyServer([], answers_as=other) as server:
        config = served_config(server.url, arms=["baseline", {"kind": "few_shot", "k": [2]}])
        report = run_experiment(config, tmp_path / "run", console=Console(file=out, width=400)).report
    assert server.posts > 2
    terminal = out.getvalue()
    warnings = [line for line in terminal.splitlines() if "answered as model" in line]
    assert warnings == [f"warning: {server.url} answered as model 'm-2026-01\\x1b]0;owned\\x07', not the configured "
                        "model.model 'm'; the answers are scored as they came, and the report lists the served ids "
                        "(served_models)"]
    assert "\x1b" not in terminal
    assert report.served_models == [other]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["served_models"] == [other]
    assert "(the replies named <code>m-2026-01" in (tmp_path / "run" / "report.html").read_text()


def run_command(*args: str, **popen) -> subprocess.Popen:
    """`tuneorprompt ARGS` in a new process running this checkout, with Ctrl-C handled by Python (a process
    started with SIGINT ignored, as a shell starts background jobs, would pass that on)."""
    root = Path(tuneorprompt.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "tuneorprompt.cli", *args], env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, ended", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                                  (signal.SIGTERM, 143, "terminated by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_run_whose_server_never_answers_within_3_seconds(tmp_path, signum, code, ended):
    """Ctrl-C, or the SIGTERM of a scheduler's timeout, while requests wait on a server that accepted them and
    never answers: they are cancelled, and `tuneorprompt run` exits at once with 128 + the signal, not after
    the client's timeout and retries; the run is recorded as interrupted and its directory is free again."""
    pytest.importorskip("mlflow")
    config, run_dir = tmp_path / "experiment.yaml", tmp_path / "run"
    with FlakyServer([], hang=True) as server, open(tmp_path / "terminal.txt", "w") as terminal:
        config.write_text(json.dumps(served_config(server.url, tracking={"backend": "mlflow"})))
        process = run_command("run", str(config), "--out", str(run_dir), stdout=terminal, stderr=subprocess.STDOUT)
        try:
            assert server.first_post.wait(120), "no request reached the server"
            signalled = time.monotonic()
            process.send_signal(signum)
            process.wait(timeout=20)
            seconds = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    print(f"{signal.Signals(signum).name}: exit status {process.returncode} {seconds:.2f} s after the signal")
    assert process.returncode == code, (tmp_path / "terminal.txt").read_text()
    assert seconds < 3.0
    with RunLock(run_dir):  # what the next run into the directory takes first
        pass
    store = Store(run_dir / "store.sqlite")
    last, = store.runs()
    store.close()
    assert (last.status, last.error) == ("interrupted", ended)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    tracked, = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert tracked.info.status == "KILLED"


def test_a_served_model_imports_neither_torch_nor_transformers():
    """`kind: openai` runs where torch is not installed (or would take seconds to import): loading the
    backend from a config and generating, stop-string cut included, stays torch-free."""
    script = textwrap.dedent("""
        import sys
        from tuneorprompt.backends import load_backend
        from tuneorprompt.config import OpenAIModelConfig
        from tuneorprompt.model import resolve_model
        from tuneorprompt.records import GenerationSettings

        spec = OpenAIModelConfig(kind="openai", base_url=sys.argv[1], model="m", context_length=64)
        completion, = load_backend(resolve_model(spec)).generate(["Capital of France?"], GenerationSettings(8, ("\\n",)))
        assert completion.text == " Paris", completion.text
        heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        print("imported:", heavy)
    """)
    root = Path(tuneorprompt.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    with FlakyServer([]) as server:
        done = subprocess.run([sys.executable, "-c", script, server.url], capture_output=True, text=True, env=env,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported: []"


# ---- a real model server: transformers serve -------------------------------------------------------------


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """`transformers serve` on a copy of the testbed model (with a chat template), offline, on a free
    port of 127.0.0.1; stopped when the module's tests are done."""
    if shutil.which("transformers", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("transformers serve is not installed (pip install 'transformers[serving]')")
    model_dir = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(TESTBED / "model", model_dir)
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    # HF_HUB_CACHE: an existing, empty folder; with none, /v1/models answers 500 offline.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub-cache")),
           "OMP_NUM_THREADS": "1"}
    log = (model_dir.parent / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"transformers serve exited ({server.returncode}): {(model_dir.parent / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not become ready in 180 s")
            time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}/v1", "model_dir": model_dir}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def capitals_prompts(n: int = 24) -> list[str]:
    rows = [json.loads(line) for line in (CAPITALS / "dev.jsonl").read_text().splitlines()[:n]]
    return [f"Question: {row['input']}\nAnswer:" for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_served_answers_match_the_local_backend(served_model, mode):
    """The same greedy prompts through `transformers serve` and through the local HF backend."""
    settings = GenerationSettings(max_new_tokens=16, stop=("\n",))
    chat = mode == "chat"
    prompts = capitals_prompts()
    if chat:
        prompts = [(Message("system", "Answer with the capital only."), Message("user", p)) for p in prompts]
    spec = OpenAIModelConfig(kind="openai", base_url=served_model["url"], model=str(served_model["model_dir"]),
                             mode=mode, context_length=256, tokenizer=str(served_model["model_dir"]), concurrency=4)
    served = load_openai_backend(spec).generate(prompts, settings)
    local_backend = load_hf_backend(ModelConfig(path=str(served_model["model_dir"]), device="cpu", chat_template=chat))
    local = local_backend.generate(prompts, settings)
    identical = sum(s.text == l.text for s, l in zip(served, local))
    print(f"{mode}: {identical}/{len(prompts)} identical answers")
    assert identical == len(prompts), [(s.text, l.text) for s, l in zip(served, local) if s.text != l.text]
    # Token counts: the server's `usage` against the local tokenization of the same prompt.
    assert [s.prompt_tokens for s in served] == [l.prompt_tokens for l in local]
    assert [s.generated_tokens for s in served] == [l.generated_tokens for l in local]
    # The local tokenizer counts as the server does (so demos are fitted to the real context).
    assert [load_openai_backend(spec).count_tokens(p) for p in prompts[:3]] == [s.prompt_tokens for s in served[:3]]


@pytest.mark.slow
def test_a_run_through_the_server_reports_its_backend_skips_fine_tuning_and_never_writes_the_key(
    served_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNEORPROMPT_TEST_KEY", SECRET)
    config = {
        "name": "served",
        "model": {"kind": "openai", "base_url": served_model["url"], "model": str(served_model["model_dir"]),
                  "context_length": 256, "api_key_env": "TUNEORPROMPT_TEST_KEY"},
        "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")} | {"max_test": 12},
        "generation": {"max_new_tokens": 16},
        "arms": ["baseline", {"kind": "few_shot", "k": [2]}, "lora"],
        "learning_curve": {"enabled": True},
    }
    console = Console(file=open(tmp_path / "terminal.txt", "w"), width=200)
    result = run_experiment(config, tmp_path / "run", console=console)
    report = result.report
    assert report.protocol["model"]["kind"] == "openai"
    assert {a.name: a.backend for a in report.arms} == {"baseline": "openai", "few_shot@2": "openai"}
    skipped = {s["arm"] for s in report.skipped_arms}
    assert skipped == {"lora", "learning_curve"}
    assert [w["arm"] for w in report.warnings if w["code"] == "skipped_arm"] == ["lora", "learning_curve"]
    console.file.close()
    terminal = (tmp_path / "terminal.txt").read_text()
    assert "Skipping lora" in terminal and "model.local_path" in terminal
    html = (tmp_path / "run" / "report.html").read_text()
    assert "lora was not run" in html
    assert html.count("<small>(openai)</small>") == 2  # each arm's row names the backend that answered it
    for path in [tmp_path / "terminal.txt", *(tmp_path / "run").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert "TUNEORPROMPT_TEST_KEY" in (tmp_path / "run" / "config.yaml").read_text()  # the variable's name only


@pytest.mark.slow
def test_with_local_weights_fine_tuning_arms_train_here_and_say_so(served_model, tmp_path):
    config = {
        "name": "served-lora",
        "model": {"kind": "openai", "base_url": served_model["url"], "model": str(served_model["model_dir"]),
                  "context_length": 256, "local_path": str(served_model["model_dir"])},
        "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")} | {"max_test": 12},
        "generation": {"max_new_tokens": 16},
        "arms": ["baseline", {"kind": "lora", "epochs": 1, "max_train_examples": 16, "learning_rates": [1e-3]}],
    }
    report = run_experiment(config, tmp_path / "run", console=Console(file=open(os.devnull, "w"))).report
    assert {a.name: a.backend for a in report.arms} == {"baseline": "openai", "lora": "hf"}
    assert report.skipped_arms == [] and report.protocol["model"]["chat_template"] is False


# ---- costs of a served model: never silently zero ---------------------------------------------------------

COST_ARMS = [{"kind": "few_shot", "k": [8]}, "instruction", "baseline"]  # listed most expensive first


def cost_plan(model: dict, tmp_path: Path):
    config = config_from_dict({
        "model": model, "arms": COST_ARMS,
        "data": {k: str(CAPITALS / f"{k}.jsonl") for k in ("train", "dev", "test")}, "generation": {"max_new_tokens": 16},
    })
    return plan_run(config, tmp_path / "run")


def test_a_served_model_of_unknown_size_is_ranked_by_tokens_not_by_list_order(tmp_path):
    with FlakyServer([]) as server:
        plan = cost_plan({"kind": "openai", "base_url": server.url, "model": "m", "context_length": 2048}, tmp_path)
    assert plan.model.num_parameters is None and decide.cost_basis(plan.estimates) == "tokens"
    assert all(e.per_query_flops is None for e in plan.estimates)  # unknown, not 0
    tokens = [e.per_query_tokens for e in plan.estimates]
    assert [e.name for e in plan.estimates] == ["baseline", "instruction", "few_shot@8"] and tokens == sorted(tokens)


@pytest.mark.slow
def test_a_served_model_of_declared_size_is_ranked_as_the_same_local_model(served_model, tmp_path):
    model_dir = served_model["model_dir"]
    local = cost_plan({"path": str(model_dir), "chat_template": False, "num_threads": 1}, tmp_path / "local")
    served = cost_plan({"kind": "openai", "base_url": served_model["url"], "model": str(model_dir),
                        "context_length": local.base.backend.context_length, "tokenizer": str(model_dir),
                        "num_parameters": local.model.num_parameters}, tmp_path / "served")
    assert decide.cost_basis(served.estimates) == decide.cost_basis(local.estimates) == "flops"
    assert [e.to_dict() for e in served.estimates] == [e.to_dict() for e in local.estimates]
    assert [e.name for e in served.estimates] == ["baseline", "instruction", "few_shot@8"]
