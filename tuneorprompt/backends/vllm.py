"""`kind: vllm`: prompt arms generate with vLLM in this process (`pip install 'tuneorprompt[vllm]'`;
vLLM needs a CUDA GPU and pins its own torch). Fine-tuning arms still train and serve the same
`path` with transformers (`ResolvedModel.weights`).

Prompts go to vLLM as token ids from `text.encode_prompt`, so the model sees exactly the tokens the HF
backend and fine-tuning give it; decoding is greedy (temperature 0) with the run's max_new_tokens and
stop strings, and the text is cut at the first stop string by `text.cut_at_stop`, as every backend cuts it. vLLM's batched
kernels round differently from transformers', so near-ties may decode differently from `kind: hf`:
the fingerprint says "vllm", and the two never share cached answers.

Not tested in this repository's CI (vLLM does not install on its CPU machines); only the error for a
missing package is.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Sequence

from tuneorprompt.backends.text import cut_at_stop, encode_prompt, render_prompt
from tuneorprompt.model import ResolvedModel
from tuneorprompt.records import Completion, GenerationSettings, Prompt


def check_installed() -> None:
    """vLLM missing is said when the run is planned, not at its first generation."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "model.kind: vllm needs vLLM, which is not installed: pip install 'tuneorprompt[vllm]' (a CUDA GPU "
            "is needed), or use kind: hf for the same model with transformers"
        )


def load_vllm_backend(model: ResolvedModel) -> "VLLMBackend":
    check_installed()
    import vllm

    spec = model.spec
    llm = vllm.LLM(
        model=spec.path, revision=spec.revision, dtype=spec.dtype, seed=spec.seed,
        tensor_parallel_size=spec.tensor_parallel_size, gpu_memory_utilization=spec.gpu_memory_utilization,
    )
    return VLLMBackend(llm, model)


class VLLMBackend:
    def __init__(self, llm, model: ResolvedModel):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.chat_template = model.chat_template  # decided from the model's files (`model.uses_chat_template`)
        self.context_length = llm.llm_engine.model_config.max_model_len
        self.fingerprint = model.fingerprint

    def release(self) -> None:
        """Nothing is freed: the vLLM engine stays loaded, so fine-tuning next to it needs GPU memory for both."""

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt, self.chat_template)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(encode_prompt(self.tokenizer, prompt, self.chat_template))

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        from vllm import SamplingParams, TokensPrompt

        ids = [encode_prompt(self.tokenizer, prompt, self.chat_template) for prompt in prompts]
        sampling = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens, stop=list(settings.stop))
        started = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sampling, use_tqdm=False)
        seconds = (time.perf_counter() - started) / max(1, len(ids))
        return [
            Completion(cut_at_stop(out.outputs[0].text, settings.stop), len(i), len(out.outputs[0].token_ids), seconds)
            for i, out in zip(ids, outputs)
        ]
