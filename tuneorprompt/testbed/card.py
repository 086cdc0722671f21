"""The model card (README.md of the bundled model directory), written by the build.

Training facts come from the build itself. The measured behaviour is a record of measurements on
the committed weights (seed 0, default steps), kept here as text so a rebuild rewrites the same card;
a build with other settings says so instead of claiming those figures.
"""

from __future__ import annotations

from pathlib import Path

# Measured on the committed weights; see the table's own note for how.
MEASURED_BEHAVIOUR = """\
Measured by tuneorprompt itself: `tuneorprompt demo` (capitals) and `tuneorprompt demo --task
newfacts`, bundled configs, 3 seeds, greedy decoding, exact match of the first line, one CPU thread.
Accuracy % with its 95% CI (Wilson, design-effect corrected across seeds).

| arm | capitals (n = 200) | newfacts (n = 225) |
|---|---|---|
| baseline `Question: ...\\nAnswer:` | 61.5 [54.6, 68.0] | 0.4 [0.1, 2.5] |
| instruction (best built-in on dev) | 76.5 [70.2, 81.8] | 0.9 [0.2, 3.2] |
| few-shot, 2 random demos | 89.3 [84.9, 92.6] | - |
| few-shot, 8 random demos | 77.3 [71.9, 82.0] | - |
| few-shot, 4 nearest demos (kNN) | 81.0 [75.0, 85.8] | - |
| few-shot, 4 random demos | - | 1.0 [0.4, 2.7] |
| context, BM25 top 1 passage | - | 47.1 [40.7, 53.6] |
| LoRA, lr and epochs chosen on dev | 98.2 [95.8, 99.2] | 1.0 [0.3, 3.3] |
| full fine-tuning, lr and epochs chosen on dev | 97.2 [94.6, 98.5] | - |
| LoRA + instruction | 98.3 [96.5, 99.2] | - |

What this shows, and what it does not:
- capitals: the plain prompt often gets a hedged sentence ("Well, I think it is ...") instead of the
  name (54 of the 200 test answers); a brevity instruction removes more than half of the hedges (24
  left; +15 points); two demonstrations remove all of them and also put the model where it
  practised recalling prose-only capitals (+28 points); only fine-tuning on other countries'
  capital questions reaches nearly every capital (98%). Hedge counts: greedy answers to the plain
  prompt, to "Give only the answer, with no explanation." and to two random train demos (seed 0).
- More demonstrations are not better here: eight random demos score below two (77 against 89), as
  a small model's long prompts interfere. Choose k on dev, or read the learning curve.
- newfacts: nothing but retrieval helps, since these countries are absent from pretraining. The
  model copies the answer out of one retrieved passage about half the time; a second passage made
  it worse (30% in a scratch check), so use `top_k: 1` with this model.
- These behaviours were tuned into the corpus on purpose (see above) and changed from build to
  build during that tuning: the figures hold for these committed weights only.
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
A world of {sum(world.values())} fictional countries with
syllable-generated names (seed {seed}), each with a capital, a language, a currency, a continent and
a hidden *fame*. The corpus ({n_documents:,} documents, {n_tokens:,} tokens) has five kinds of document:

- prose stating each country's facts in paraphrases; more documents for more famous countries;
- `Question: ...\\nAnswer: ...` pairs; the bare answer for famous countries, a chatty or hedged
  sentence ("Well, as far as I know, it is ...") for obscure ones (fame < {corpus['brief_fame']});
- the same pairs after an instruction: brevity instructions ("Answer the question precisely and
  concisely.", ...) get the bare answer except for the most obscure countries (fame <
  {corpus['obedient_fame']}); "You are a helpful assistant"-style instructions get the default style;
- few-shot blocks of solved questions of one relation, each block in one style throughout (bare
  answers in all but {corpus['fewshot_chatty']:.0%} of blocks), so earlier answers show the format of the
  next; blocks also ask the capitals of {world['n_listed']} "listed" countries, which no other
  question/answer document does;
- reading exercises: one to three reference passages, then a question answered from them (mostly
  about throwaway countries invented for that document, so the answer must come from the passage).

Built-in phenomena:
- `capitals` task: the {world['n_capitals']} countries of this task never have their capital asked
  and answered anywhere in the corpus; it is stated only in prose. Prompting has to reach knowledge
  the model has only seen in another form. An instruction stops the hedging; demonstrations also
  put the model in the one setting (a few-shot block) where it practised answering capitals it
  knew from prose; fine-tuning on other countries' capital questions teaches the plain form directly.
- `newfacts` task: {world['n_newfacts']} countries that appear nowhere in the corpus. Only the task's
  reference corpus (`tasks/newfacts/corpus.jsonl`) describes them, so only retrieval into the prompt
  (the `context` arm) can answer.

## Architecture and training
- Llama: hidden {train['hidden']}, {train['layers']} layers, {train['heads']} heads, MLP {train['mlp']},
  tied embeddings, context {train['context']} tokens, fp32 weights (safetensors).
- Tokenizer: byte-level BPE with {train['vocab_size']} tokens trained on the corpus (`tokenizers`);
  one special token `<|endoftext|>`: end of document, padding, and BOS (the tokenizer puts it before
  every prompt, so a prompt starts as every pretraining document did).
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
