"""The commented example config written by `tuneorprompt init` (validated by the test suite)."""

EXAMPLE_CONFIG = """\
# tuneorprompt experiment. Every key is optional unless marked required; unknown keys are errors.
name: my-task

model:
  path: gpt2                  # required: hub id, local directory or .gguf file of a causal LM
  revision: null              # pin a hub revision (branch, tag or commit)
  dtype: float32              # float32 | bfloat16 | float16 | auto
  device: auto                # auto | cpu | cuda | cuda:1
  batch_size: 64              # prompts per generation batch; lower it if a long-prompt batch runs out of memory
  num_threads: null           # torch CPU threads; null: the cores free at start; 1 is steadiest on a shared machine
  chat_template: auto         # auto: the tokenizer's chat template when it has one (instruct models)
  # allow_pickle: false       # also load pickle *.bin weights; pickle can run code, so only files you trust
  # trust_remote_code: false  # run the model repository's own Python code; needs revision: <40-hex commit>

data:
  # Either three files ...
  train: data/train.jsonl     # demos and fine-tuning data (JSONL, CSV or Parquet)
  dev: data/dev.jsonl         # every choice (instruction, learning rate, epoch) is made on dev
  test: data/test.jsonl       # held out: read once per arm, never used to choose
  # ... or one file split by seed:
  # file: data/all.jsonl
  # split: {train: 0.6, dev: 0.2, test: 0.2}
  # split_seed: 0
  fields: {input: input, target: target, id: id}   # target: a string or a list of acceptable answers
  corpus: null                # reference passages (JSONL with `text`) for the context arm
  allow_overlap: false        # refuse to run when test inputs also occur in train/dev
  max_test: null              # only the first N test items (smoke runs)

prompt:
  template: "Question: {{ input }}\\nAnswer:"      # the task's plain format (jinja2, sandboxed)
  answer_prefix: " "          # between a prompt and its answer in demos and fine-tuning targets (no chat template)
  demo_separator: "\\n\\n"
  instruction_template: "{{ instruction }}\\n{{ prompt }}"
  instructions: []            # your candidate instructions, tried next to the built-in ones
  builtin_instructions: true
  system: null                # chat models: the system message, replacing the template's default one

generation:                   # greedy for every arm
  max_new_tokens: 32
  stop: ["\\n"]
  extract: first_line         # first_line | full | regex (with extract_regex)

metric:
  accuracy: exact             # exact | contains | f1 | regex | choice | my_module:my_function
  relevance_model: all-MiniLM-L6-v2

arms:
  - baseline
  - instruction
  - kind: few_shot
    k: [1, 2, 4, 8]
  - kind: few_shot_knn
    k: [4]
  # - kind: context           # needs data.corpus
  #   top_k: 2
  #   retriever: bm25         # bm25 | embedding
  # - kind: prompt_search     # instruction, placement, demos and a format line searched on dev
  #   budget: match_finetune  # model FLOPs: the most expensive fine-tuning arm's cost, or a number (1e15)
  #   holdout: 0.3            # share of dev the search never sees; the final pick is made on it
  #   proposer: null          # the model that rewrites instructions from wrong replies; null: this one
  - kind: lora
    epochs: 3
    learning_rates: []        # empty: the default grid, chosen on dev
  - kind: full
  - lora+instruction

seeds: [0, 1, 2]              # repeats few-shot draws and fine-tuning runs

target:
  accuracy: 0.8               # the recommended arm must reach this
  lenient: false              # true: compare the point estimate instead of the lower CI bound

strategy: full                # full: every arm; ladder: cheapest first, stop at the first that meets the target
"""
