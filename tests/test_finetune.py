"""Fine-tuning: what reaches the loss, the prompt/answer token boundary, that a tiny model learns a
handful of examples and stops, dev-only selection, and resuming after kill -9."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import build_tiny_gpt2, build_tiny_llama
from tuneorprompt.backends.hf import encode_prompt, load_hf_backend
from tuneorprompt.model import fingerprint_directory
from tuneorprompt.config import FineTuneArm, ModelConfig
from tuneorprompt.finetune import build_trainer, finetune
from tuneorprompt.progress import make_progress
from tuneorprompt.training_data import TrainingDataError, TrainingExample, tokenize_example, training_dataset
from tuneorprompt.training_state import FineTuneStateError
from tuneorprompt.records import GenerationSettings

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin")]


def capitals() -> list[TrainingExample]:
    return [
        TrainingExample(f"cap-{i}", f"Question: What is the capital of {country}?\nAnswer:", " " + city)
        for i, (country, city) in enumerate(CAPITALS)
    ]


def exact_match(examples: list[TrainingExample], max_new_tokens: int = 8):
    """dev_score: greedy exact match (EOS the only stop) over `examples`."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, stop=())

    def score(backend) -> float:
        completions = backend.generate([e.prompt for e in examples], settings)
        return sum(c.text.strip() == e.answer.strip() for c, e in zip(completions, examples)) / len(examples)

    return score


def cpu(path: Path) -> ModelConfig:
    return ModelConfig(path=str(path), device="cpu", num_threads=1, batch_size=4)


@pytest.fixture(scope="module")
def confident_dirs(tmp_path_factory) -> dict[str, Path]:
    """The tiny models with embeddings scaled by 10.

    A random init (std 0.02) with tied input/output embeddings gives logits within about +-1 whatever
    the hidden state, so a LoRA adapter (which cannot touch the embeddings) cannot make any token clearly
    the likeliest; pretrained embeddings have norms near 1. Scaling gives the tiny model that property.
    """
    dirs = {}
    for family, build in (("gpt2", build_tiny_gpt2), ("llama", build_tiny_llama)):
        directory = build(tmp_path_factory.mktemp(f"confident-{family}"))
        model = AutoModelForCausalLM.from_pretrained(directory)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(10.0)
        model.save_pretrained(directory)
        dirs[family] = directory
    return dirs


# ---- what reaches the loss ------------------------------------------------------------------------------


def test_labels_mask_prompt_and_padding_and_supervise_eos_when_pad_is_eos(tiny_gpt2_dir, tmp_path):
    examples = [
        TrainingExample("long", "Question: What is the capital of France?\nAnswer:", " Paris"),
        TrainingExample("short", "Question: Italy?\nAnswer:", " Rome"),
        TrainingExample("longest", "Answer concisely.\nQuestion: Who wrote Hamlet?\nAnswer:", " Shakespeare"),
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    dataset = training_dataset(tokenizer, examples, chat_template=False)
    trainer = build_trainer(cpu(tiny_gpt2_dir), FineTuneArm(kind="full"), 1e-3, dataset, tokenizer, tmp_path, seed=0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])  # a batch without "longest"
    examples = examples[:2]

    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token is None  # as GPT-2 ships: batches are padded with EOS, the classic trap
    width = batch["input_ids"].shape[1]
    for row, example in enumerate(examples):
        prompt = encode_prompt(tokenizer, example.prompt, chat_template=False)
        target = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [eos]
        length = len(prompt) + len(target)
        labels, ids = batch["labels"][row].tolist(), batch["input_ids"][row].tolist()
        assert ids[:length] == prompt + target
        assert labels[: len(prompt)] == [-100] * len(prompt)  # prompt: no loss
        assert labels[len(prompt) : length] == target  # answer and the final EOS: loss
        assert labels[length:] == [-100] * (width - length)  # padding (also EOS ids): no loss
        assert ids[length:] == [eos] * (width - length)
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (width - length)
    assert width == len(dataset["input_ids"][0]) < len(dataset["input_ids"][2])  # padded to the batch, not the set


# ---- batching: what length grouping and the supervised-only head change, and what they do not ----------

VARIED = [
    TrainingExample("short", "Question: Italy?\nAnswer:", " Rome"),
    TrainingExample("mid", "Question: What is the capital of France?\nAnswer:", " Paris"),
    TrainingExample(
        "long",
        "Answer concisely, in one word, the way an atlas would.\nQuestion: Which city is the capital of Germany?\nAnswer:",
        " Berlin, Germany",
    ),
]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_examples_loss_and_gradients_do_not_depend_on_its_batch(family, tiny_gpt2_dir, tiny_llama_dir, tmp_path):
    """What length grouping changes, and why that is not a change of outputs.

    Grouping changes which examples share a batch, so the optimizer sees another sequence of
    mini-batches: the trained weights differ from a random-batch run as they would under another data
    seed (a new recipe, recorded in the job description; see the next test). What must NOT change is
    what each example contributes: an example's summed answer cross-entropy, and its gradient, must be
    the same whether it is padded alone or inside a batch padded to a much longer neighbour (padding is
    masked out of attention and of the labels, and with right padding a causal model's real positions
    never see it). So the loss of a mixed batch is the token-weighted mean of its examples' losses taken
    one by one, and so is its gradient, up to float32 rounding (the matmuls have other shapes).

    The supervised-only head (logits only at positions whose next token is supervised) must give the
    same loss and gradients as transformers' stock loss over every position.
    """
    directory = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    dataset = training_dataset(tokenizer, VARIED, chat_template=False)
    trainer = build_trainer(cpu(directory), FineTuneArm(kind="full"), 1e-3, dataset, tokenizer, tmp_path, seed=0)
    model = trainer.model.eval()  # dropout off: the comparison is of the function, not of the noise draws
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(rows: list[int], stock: bool = False) -> tuple[float, int, list[torch.Tensor]]:
        batch = trainer.data_collator([dataset[i] for i in rows])
        count = int((batch["labels"][:, 1:] != -100).sum())
        trainer.supervised_logits_only = not stock
        loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(count))
        trainer.supervised_logits_only = True
        return loss.item(), count, list(torch.autograd.grad(loss, params))

    lengths = [len(ids) for ids in dataset["input_ids"]]
    assert lengths[0] < lengths[1] < lengths[2]
    alone = [loss_and_grads([i]) for i in range(3)]
    for rows in ([0, 2], [1, 2], [0, 1, 2], [2, 0]):
        mixed_loss, mixed_count, mixed_grads = loss_and_grads(rows)
        assert mixed_count == sum(alone[i][1] for i in rows)
        expected = sum(alone[i][0] * alone[i][1] for i in rows) / mixed_count
        assert mixed_loss == pytest.approx(expected, rel=1e-5)
        for k, grad in enumerate(mixed_grads):
            weighted = sum(alone[i][2][k] * alone[i][1] for i in rows) / mixed_count
            torch.testing.assert_close(grad, weighted, rtol=1e-4, atol=1e-6)
        stock_loss, _, stock_grads = loss_and_grads(rows, stock=True)
        assert mixed_loss == pytest.approx(stock_loss, rel=1e-6)
        for grad, stock in zip(mixed_grads, stock_grads):
            torch.testing.assert_close(grad, stock, rtol=1e-4, atol=1e-6)


def test_length_grouped_batches_cover_every_example_once_and_pad_less_than_random_ones():
    from tuneorprompt.training_data import LengthGroupedSampler

    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(10, 300, (203,), generator=generator).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8)

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)

    torch.manual_seed(0)
    batches = sampler.batches()
    assert sorted(i for batch in batches for i in batch) == list(range(203))  # an epoch sees each example once
    assert [len(batch) for batch in batches] == [8] * 25 + [3]  # only the last batch is short
    torch.manual_seed(0)
    assert list(sampler) == [i for batch in batches for i in batch]  # the seed decides the epoch
    assert sampler.batches() != batches  # ... and the next epoch draws again
    torch.manual_seed(0)
    random_order = torch.randperm(203).tolist()
    random_batches = [random_order[i : i + 8] for i in range(0, 203, 8)]
    assert padded(batches) < 1.1 * sum(lengths) < padded(random_batches)
    # Batch order is shuffled, not longest-first or sorted.
    maxima = [max(lengths[i] for i in batch) for batch in batches[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_the_job_records_the_batching_recipe(tiny_gpt2_dir):
    """A fine-tune stored under another batching recipe (random batches, or another grouping) is
    another job: its folder key changes and an existing folder of the old recipe is not resumed."""
    from tuneorprompt.finetune import describe_job
    from tuneorprompt.model import resolve_local_weights
    from tuneorprompt.training_data import BATCHING

    job = describe_job(resolve_local_weights(cpu(tiny_gpt2_dir)), FineTuneArm(kind="lora"), capitals(), seed=0, dev_key="d")
    assert job["batching"] == BATCHING == {"order": "length-grouped", "group_batches": 50, "logits": "supervised"}


# ---- the prompt/answer boundary -------------------------------------------------------------------------

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Answer the question precisely and concisely.\nQuestion: Who wrote Hamlet?\nAnswer:",
    "Paris is the capital of",
    "Q: 2+2=",
]
ANSWERS = [" Paris", "Paris", " Rome, Italy", "4", "Shakespeare"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_prompt_tokens_are_the_tokens_generation_sees(family, tiny_gpt2_dir, tiny_llama_dir):
    directory = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    backend = load_hf_backend(cpu(directory))
    seen: list[list[int]] = []

    def spy(module, args, kwargs):  # the prompt ids of generation's first forward pass (one prompt: no padding)
        if not seen:
            seen.extend(kwargs["input_ids"].tolist())

    backend.model.register_forward_pre_hook(spy, with_kwargs=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    for prompt in PROMPTS:
        seen.clear()
        backend.generate([prompt], GenerationSettings(max_new_tokens=1))
        for answer in ANSWERS:
            row = tokenize_example(tokenizer, TrainingExample("x", prompt, answer), chat_template=False)
            split = len(seen[0])
            assert row["input_ids"][:split] == seen[0]
            completion = row["input_ids"][split:]
            assert completion[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in completion[:-1]
            assert row["labels"] == [-100] * split + completion  # loss on the answer and EOS only
            assert tokenizer.decode(completion[:-1]).strip() == answer.strip()

    def answer_tokens(answer: str) -> list[str]:
        row = tokenize_example(tokenizer, TrainingExample("x", PROMPTS[0], answer), chat_template=False)
        return tokenizer.convert_ids_to_tokens([label for label in row["labels"] if label != -100][:-1])

    # Byte-level BPE keeps the space in the answer's first token; Metaspace marks a word start either way.
    expected = {"gpt2": (["ĠParis"], ["Paris"]), "llama": (["▁Paris"], ["▁Paris"])}[family]
    assert (answer_tokens(" Paris"), answer_tokens("Paris")) == expected


def test_examples_that_cannot_be_trained_name_their_id(tiny_gpt2_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    with pytest.raises(TrainingDataError, match="'no-answer'"):
        tokenize_example(tokenizer, TrainingExample("no-answer", "Question: France?\nAnswer:", ""), chat_template=False)

    def never(backend):
        raise AssertionError("dev_score must not run before the data is checked")

    too_long = TrainingExample("too-long", "Paris is the capital. " * 100, " Paris")  # 600 tokens > 256
    arm = FineTuneArm(kind="full", learning_rates=[1e-3], epochs=1)
    with pytest.raises(TrainingDataError, match="'too-long'.*context of 256"):
        finetune(cpu(tiny_gpt2_dir), arm, capitals()[:1] + [too_long], never, tmp_path / "run", seed=0)


# ---- learning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "family", "batch_size", "epochs"),
    [("full", "gpt2", 1, 30), ("lora", "llama", 4, 120)],
)
def test_overfit_reproduces_the_examples_and_stops_at_eos(kind, family, batch_size, epochs, confident_dirs, tmp_path):
    examples = capitals()
    base = cpu(confident_dirs[family])
    arm = FineTuneArm(kind=kind, learning_rates=[3e-3], epochs=epochs, batch_size=batch_size)
    tuned = finetune(base, arm, examples, exact_match(examples), tmp_path / "run", seed=0)

    assert tuned.cost.extra["dev_score"] == 1.0
    max_new_tokens = 8
    completions = tuned.backend.generate([e.prompt for e in examples], GenerationSettings(max_new_tokens, stop=()))
    tokenizer = tuned.backend.tokenizer
    for completion, example in zip(completions, examples):
        answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
        assert completion.text == tokenizer.decode(answer_ids)  # exactly the answer ...
        assert completion.generated_tokens == len(answer_ids) + 1 < max_new_tokens  # ... then EOS, not the cap

    # The saved directory is the standard layout, loadable without tuneorprompt, and answers the same.
    raw = AutoModelForCausalLM.from_pretrained(tuned.model_dir if kind == "full" else base.path)
    if kind == "lora":
        assert (tuned.model_dir / "adapter_config.json").is_file()
        raw = PeftModel.from_pretrained(raw, tuned.model_dir)
    prompt = torch.tensor([encode_prompt(tokenizer, examples[0].prompt, chat_template=False)])
    output = raw.eval().generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
    assert tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True) == completions[0].text

    assert tuned.backend.fingerprint != fingerprint_directory(Path(base.path))
    assert not any(tuned.model_dir.glob("*.pt")) and not (tuned.model_dir / "training_args.bin").exists()
    assert sorted(p.name for p in tuned.model_dir.parent.iterdir()) == ["model", "result.json"]
    # Finished runs keep their state and best epoch (another grid may select it), not their checkpoints.
    assert not list(tuned.model_dir.parents[1].glob("lr-*/checkpoint-*"))

    cost = tuned.cost
    assert cost.train_tokens == cost.extra["tokens_per_epoch"] * epochs
    assert cost.extra["supervised_tokens_per_epoch"] == sum(
        len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) + 1 for e in examples
    )
    if kind == "full":
        assert cost.trainable_params == cost.total_params
        assert cost.flops == 6 * cost.total_params * cost.train_tokens
    else:
        assert 0 < cost.trainable_params < cost.total_params
        assert cost.flops == (4 * cost.total_params + 2 * cost.trainable_params) * cost.train_tokens
    assert cost.wall_seconds > 0 and cost.peak_rss_mb > 0 and cost.adapter_mb > 0
    # The loaded model is the one selected: it scores on dev what it scored in training.
    assert exact_match(examples)(tuned.backend) == cost.extra["dev_score"]


# ---- selection on dev -----------------------------------------------------------------------------------


def test_selection_keeps_the_best_dev_epoch_ties_to_the_cheaper(tiny_gpt2_dir, tmp_path):
    # 2 learning rates x 3 epochs, scored in this order. (1e-3, epoch 2) and (2e-3, epoch 1) tie at 0.6:
    # the earlier epoch wins.
    scores = iter([0.2, 0.6, 0.4, 0.6, 0.6, 0.1])
    seen = []

    def scripted(backend) -> float:
        assert not backend.model.training  # dropout off while scoring
        weights = {name: p.detach().clone() for name, p in backend.model.named_parameters()}
        seen.append((backend.fingerprint, weights))
        return next(scores)

    base = cpu(tiny_gpt2_dir)
    arm = FineTuneArm(kind="full", learning_rates=[1e-3, 2e-3], epochs=3, batch_size=2)
    tuned = finetune(base, arm, capitals(), scripted, tmp_path / "run", seed=0)

    extra = tuned.cost.extra
    assert (extra["learning_rate"], extra["epoch"], extra["dev_score"]) == (2e-3, 1, 0.6)
    assert extra["dev_scores"] == {"0.001": [0.2, 0.6, 0.4], "0.002": [0.6, 0.6, 0.1]}
    for name, param in tuned.backend.model.named_parameters():
        assert torch.equal(param, seen[3][1][name]), name  # the weights scored 4th: lr 2e-3, epoch 1
    fingerprints = [fingerprint for fingerprint, _ in seen]
    assert len(set(fingerprints)) == 6 and fingerprint_directory(Path(base.path)) not in fingerprints
    assert tuned.cost.train_tokens == 6 * extra["tokens_per_epoch"]  # the whole search is the cost

    def never(backend):
        raise AssertionError("a finished job is loaded, not trained again")

    again = finetune(base, arm, capitals(), never, tmp_path / "run", seed=0)
    assert again.cost == tuned.cost and again.backend.fingerprint == tuned.backend.fingerprint
    with pytest.raises(FineTuneStateError, match="another fine-tuning job"):
        finetune(base, arm, capitals(), never, tmp_path / "run", seed=1)


# ---- progress while training --------------------------------------------------------------------------


def test_training_without_a_terminal_logs_its_steps_epoch_loss_and_model_loads(tiny_gpt2_dir, tmp_path):
    """Minutes of training are not silent in a log: a line per tenth of the optimizer steps (here each
    of 4 is a quarter) with the epoch and the epoch's mean loss so far, and each model load announced."""
    console = Console(file=io.StringIO(), width=200)  # a file, as under nohup or in CI
    arm = FineTuneArm(kind="lora", learning_rates=[1e-3], epochs=2, batch_size=2)
    with make_progress(console) as progress:
        tuned = finetune(cpu(tiny_gpt2_dir), arm, capitals(), exact_match(capitals()), tmp_path / "run", seed=0,
                         progress=progress)
    lines = [line[11:] for line in console.file.getvalue().splitlines()]  # without the [HH:MM:SS] stamp
    training = "lora [seed 0] training, lr 0.001, 4 examples"
    assert f"{training}: loading {tiny_gpt2_dir}: started" in lines
    assert any(re.fullmatch(rf"{re.escape(training)}: loading .*: \d+ s elapsed, done", line) for line in lines)
    steps = [re.fullmatch(rf"{re.escape(training)}: (\d)/4 \(\d+%\), .*; epoch ([\d.]+)/2, loss ([\d.]+), lr \S+", line)
             for line in lines]
    steps = [(int(m[1]), float(m[2]), float(m[3])) for m in steps if m]
    assert [(step, epoch) for step, epoch, _ in steps] == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]
    # At an epoch's last step the loss shown is the epoch's mean, which the training records as its loss.
    recorded = tuned.cost.extra["train_loss"]["0.001"]
    assert [loss for step, _, loss in steps if step in (2, 4)] == pytest.approx(recorded, abs=1e-4)
    assert any(line.startswith(f"loading model {tiny_gpt2_dir} with adapter ") and line.endswith("done") for line in lines)


# ---- kill -9 and resume ---------------------------------------------------------------------------------

CHILD = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.test_finetune import RESUME_ARM, capitals, cpu, exact_match
from tuneorprompt.finetune import finetune

score = exact_match(capitals())
calls = 0

def dev_score(backend):
    global calls
    calls += 1
    if calls == {hang_at}:  # after epoch 2 of the first learning rate: signal, then wait to be killed
        Path({ready!r}).write_text("ready")
        time.sleep(600)
    return score(backend)

finetune(cpu(Path({model!r})), RESUME_ARM, capitals(), dev_score, Path({out!r}), seed=0)
"""

# Full fine-tuning of GPT-2 (dropout on): resuming must also restore the RNG state.
RESUME_ARM = FineTuneArm(kind="full", learning_rates=[1e-3, 3e-3], epochs=3, batch_size=2)


def test_kill_9_then_rerun_resumes_and_ends_as_an_uninterrupted_run(tiny_gpt2_dir, tmp_path):
    out, ready = tmp_path / "killed", tmp_path / "ready"
    root = str(Path(__file__).parents[1])
    script = CHILD.format(root=root, hang_at=2, ready=str(ready), model=str(tiny_gpt2_dir), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "the training process never reached epoch 2"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    run_dir = out / "lr-0.001"
    assert (run_dir / "checkpoint-2").is_dir() and not list(out.glob("grid-*/result.json"))
    # As if the kill had also hit Trainer in the middle of writing the next checkpoint.
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "checkpoint-4" / "optimizer.pt").write_bytes(b"half written")

    examples = capitals()
    scored = []

    def counting(backend) -> float:
        scored.append(backend.fingerprint)
        return exact_match(examples)(backend)

    resumed = finetune(cpu(tiny_gpt2_dir), RESUME_ARM, examples, counting, out, seed=0)
    assert len(scored) == 5  # epoch 1 of the first learning rate was committed and is not redone
    reference = finetune(cpu(tiny_gpt2_dir), RESUME_ARM, examples, exact_match(examples), tmp_path / "straight", seed=0)

    for key in ("learning_rate", "epoch", "dev_score", "dev_scores", "train_loss"):
        assert resumed.cost.extra[key] == reference.cost.extra[key], key
    assert resumed.cost.train_tokens == reference.cost.train_tokens
    for (name, a), (_, b) in zip(resumed.backend.model.named_parameters(), reference.backend.model.named_parameters()):
        assert torch.equal(a, b), name


# ---- keys: what a finished job is re-used for ------------------------------------------------------------


def test_a_wider_grid_trains_only_its_new_learning_rates(tiny_gpt2_dir, tmp_path):
    scored = []

    def counting(backend) -> float:
        scored.append(backend.fingerprint)
        return exact_match(capitals())(backend)

    narrow = FineTuneArm(kind="full", learning_rates=[1e-3], epochs=2, batch_size=2)
    first = finetune(cpu(tiny_gpt2_dir), narrow, capitals(), counting, tmp_path / "run", seed=0)
    assert len(scored) == 2
    wide = narrow.model_copy(update={"learning_rates": [1e-3, 3e-3]})
    second = finetune(cpu(tiny_gpt2_dir), wide, capitals(), counting, tmp_path / "run", seed=0)
    assert len(scored) == 4  # two epochs of 3e-3 only: 1e-3 came back from its committed state
    assert second.cost.extra["dev_scores"]["0.001"] == first.cost.extra["dev_scores"]["0.001"]
    assert second.cost.extra["learning_rates"] == [1e-3, 3e-3]
    assert first.model_dir != second.model_dir and first.model_dir.is_dir()  # each grid keeps its selection


def test_a_changed_dev_scoring_is_another_job(tiny_gpt2_dir, tmp_path):
    arm = FineTuneArm(kind="full", learning_rates=[1e-3], epochs=1, batch_size=2)
    finetune(cpu(tiny_gpt2_dir), arm, capitals(), exact_match(capitals()), tmp_path / "run", seed=0, dev_key="exact")
    with pytest.raises(FineTuneStateError, match="dev scoring"):
        finetune(cpu(tiny_gpt2_dir), arm, capitals(), exact_match(capitals()), tmp_path / "run", seed=0,
                 dev_key="contains")


FINGERPRINT_CHILD = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.test_finetune import capitals, cpu, exact_match
from tuneorprompt.config import FineTuneArm
from tuneorprompt.finetune import finetune

arm = FineTuneArm(kind="lora", learning_rates=[1e-3], epochs=1, batch_size=2, target_modules=["c_attn", "c_proj", "c_fc"])
print(finetune(cpu(Path({model!r})), arm, capitals(), exact_match(capitals()), Path({out!r}), seed=0).backend.fingerprint)
"""


def test_the_same_lora_job_has_the_same_fingerprint_in_every_process(tiny_gpt2_dir, tmp_path):
    # PEFT writes target_modules from a set: without sorting, its order (and the adapter's fingerprint,
    # and so every cached answer of the fine-tuned model) would change with the process's hash seed.
    fingerprints = []
    for hash_seed in ("1", "2"):
        script = FINGERPRINT_CHILD.format(
            root=str(Path(__file__).parents[1]), model=str(tiny_gpt2_dir), out=str(tmp_path / f"run-{hash_seed}")
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        fingerprints.append(done.stdout.strip().splitlines()[-1])
    assert fingerprints[0] == fingerprints[1]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_training_supervises_the_reply_and_its_end_of_turn_as_inference_sees_it(tiny_gpt2_dir):
    from tuneorprompt.config import PromptConfig
    from tuneorprompt.prompts import PromptFormat, PromptRecipe
    from tuneorprompt.records import Example
    from tuneorprompt.retrieval import RandomDemos

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"  # as instruct models end a turn
    tokenizer.chat_template = CHATML
    chat = PromptFormat(PromptConfig(), chat=True)
    pool = (Example("d", "What is the capital of Italy?", ("Rome",)),)
    query = Example("q", "What is the capital of France?", ("Paris",))
    conversation = PromptRecipe(chat, demos=RandomDemos(pool, 1, seed=0)).build(query)

    row = tokenize_example(tokenizer, TrainingExample("q", conversation, chat.answer(query)), chat_template=True)
    inference = encode_prompt(tokenizer, conversation, chat_template=True)
    n = len(inference)
    assert row["input_ids"][:n] == inference and row["labels"][:n] == [-100] * n
    # Only the reply and its end of turn are learned, and the reply starts without a space.
    assert row["labels"][n:] == row["input_ids"][n:]
    assert tokenizer.decode(row["input_ids"][n:]) == "Paris<|im_end|>"
    # The same ids as the template renders for the finished conversation, through the end of the turn.
    messages = [{"role": m.role, "content": m.content} for m in conversation] + [{"role": "assistant", "content": "Paris"}]
    finished = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert finished[: len(row["input_ids"])] == row["input_ids"]
