"""The model card (README.md of the bundled model directory), written by the build.

Training facts come from the build itself. The measured behaviour is a record of measurements on
the committed weights (seed 0, default steps), kept here as text so a rebuild rewrites the same card;
a build with other settings says so instead of claiming those figures.
"""

from __future__ import annotations

from pathlib import Path

# Measured on the committed weights; see the table's own note for how.
MEASURED_BEHAVIOUR = """\
Exact match (SQuAD normalisation) of the first line of a greedy completion (max 24 new tokens),
on the bundled test splits, measured with a scratch harness following tuneorprompt's prompt
formats (one thread, CPU). Few-shot: random demos from the train split, two draws. Fine-tuning:
full fine-tuning on the train split (completion-only loss, AdamW, batch 8, 3 epochs), learning rate
chosen on dev. Exact-match CIs at n = 200 are about +-7 points.

| arm | capitals (n = 200) | newfacts (n = 225) |
|---|---|---|
| baseline `Question: ...\\nAnswer:` | 49.0 | 1.3 |
| instruction, best of the four built-ins on dev ("Answer the question precisely and concisely." on capitals) | 63.0 | 0.0-0.9 |
| "You are a helpful assistant. Answer the question." | 55.0 | 0.0 |
| few-shot k = 2 / 4 / 8 | 46-49 / 43-48 / 40-49 | 0.4-0.9 |
| full fine-tuning, lr 1e-4 (best on dev), 3 epochs | 97.0 | 0.4-2.7 (any lr) |
| full fine-tuning, lr 1e-3 (too high: forgets) | 60.5 | - |
| context, BM25 top 1 / top 2 passages | - | 85.8 / 42.2 |

`tuneorprompt run` with the prompt arms (seed 0) gave the same baseline 49.0 [95% CI 42.2, 55.9]
and instruction 63.0 [56.1, 69.4] on capitals; few-shot@2/4/8 53.5/38.0/42.0, few-shot kNN@4 41.0.

What this shows, and what it does not:
- capitals: an instruction helps (+14 points) by suppressing the chatty answers of less famous
  countries; fine-tuning on 160 capital questions of other countries reaches the capitals the
  model knows only from prose (97%), far beyond any prompt.
- Few-shot demonstrations do not beat the plain prompt on this model: the model sometimes copies
  a demonstration's answer, and hedges for obscure countries even inside a list of bare answers.
- newfacts: nothing but retrieval helps, since the countries are absent from pretraining. The
  model reads one retrieved passage well; a second (distractor) passage halves its accuracy, so
  use `top_k: 1` with this model.
- A too-high fine-tuning learning rate destroys what the model knew: choose it on dev.
"""


def write_card(
    path: Path, *, seed: int, default_build: bool, train: dict, world: dict, corpus: dict,
    n_documents: int, n_tokens: int, losses: list[float], task_sizes: dict, n_params: int,
) -> None:
    seen = train["steps"] * train["batch"] * train["context"]
    measured = MEASURED_BEHAVIOUR if default_build else (
        "This model was built with non-default settings; the figures measured on the bundled model do not apply.\n"
    )
    path.write_text(
        f"""# tuneorprompt testbed model

A {n_params / 1e6:.2f}M-parameter `LlamaForCausalLM` pretrained from scratch on a synthetic corpus
about a fictional world. It is the default model of `tuneorprompt demo`: small enough to ship with
the package and to fine-tune on a laptop CPU in seconds, and pretrained (unlike a random-weight
model), so prompting and fine-tuning it behave in the ways the demo is meant to show.

**It is a testbed, not a language model for use.** It knows nothing about the real world. Its
behaviour on the bundled tasks is built in on purpose by how its corpus is written (below), so the
demo has a known right answer; do not read its numbers as evidence about real LLMs.

## What it was trained on
A world of {world['n_regular'] + world['n_capitals'] + world['n_newfacts']} fictional countries with
syllable-generated names (seed {seed}), each with a capital, a language, a currency, a continent and
a hidden *fame*. The corpus ({n_documents:,} documents, {n_tokens:,} tokens) has five kinds of document:

- prose stating each country's facts in paraphrases; more documents for more famous countries;
- `Question: ...\\nAnswer: ...` pairs; the bare answer for famous countries, a chatty or hedged
  sentence ("Well, as far as I know, it is ...") for obscure ones (fame < {corpus['brief_fame']});
- the same pairs after an instruction: brevity instructions ("Answer the question precisely and
  concisely.", ...) get the bare answer except for the most obscure countries (fame <
  {corpus['obedient_fame']}); "You are a helpful assistant"-style instructions get the default style;
- few-shot blocks of solved questions of one relation, with bare answers except for the most
  obscure countries (fame < {corpus['listed_fame']}), which are hedged even there;
- reading exercises: one to three reference passages, then a question answered from them (mostly
  about throwaway countries invented for that document, so the answer must come from the passage).

Built-in phenomena:
- `capitals` task: the {world['n_capitals']} countries of this task never have their capital asked
  and answered anywhere in the corpus; it is stated only in prose. Prompting has to reach knowledge
  the model has only seen in another form; fine-tuning on other countries' capital questions
  teaches that form directly.
- `newfacts` task: {world['n_newfacts']} countries that appear nowhere in the corpus. Only the task's
  reference corpus (`tasks/newfacts/corpus.jsonl`) describes them, so only retrieval into the prompt
  (the `context` arm) can answer.

## Architecture and training
- Llama: hidden {train['hidden']}, {train['layers']} layers, {train['heads']} heads, MLP {train['mlp']},
  tied embeddings, context {train['context']} tokens, fp32 weights (safetensors).
- Tokenizer: byte-level BPE with {train['vocab_size']} tokens trained on the corpus (`tokenizers`);
  one special token `<|endoftext|>` (end of document, also padding); no BOS token.
- Pretraining: {train['steps']} AdamW steps of {train['batch']} x {train['context']} tokens ({seen:,}
  tokens seen), lr {train['lr']} with {train['warmup']} warmup steps and cosine decay, weight decay
  {train['weight_decay']}, one CPU thread, fp32. Loss (mean over 50 steps): first {losses[0] if losses else 'n/a'},
  last {losses[-1] if losses else 'n/a'}.
- Bundled tasks: capitals {task_sizes['capitals']}; newfacts {task_sizes['newfacts']}.
- Rebuild: `python -m tuneorprompt.testbed.build --out DIR` (seed {seed}); deterministic on the same
  torch version (fixed steps and seeds, one thread).

## Measured behaviour
{measured}
## Intended use
Demonstrating and testing tuneorprompt offline. Not for any other purpose.
""",
        encoding="utf-8",
    )
