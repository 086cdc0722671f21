"""Where demonstrations and reference passages come from: a seeded random draw from the training
pool, the nearest training examples by embedding similarity, or the best-matching corpus passages
(BM25 or embeddings). All of them see only the query's input, never its target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from rank_bm25 import BM25Okapi

from tuneorprompt.records import Example

# texts -> [n, dim] float32, L2-normalised rows (so a dot product is the cosine similarity)
Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class RandomDemos:
    """One fixed draw of k demos per seed, used for every query: the prompt a team would deploy.

    A fixed set per seed (rather than a fresh draw per query) is what makes the seed-to-seed spread
    meaningful: it is the variance of "which examples did we happen to put in the prompt".
    """

    pool: tuple[Example, ...]
    k: int
    seed: int

    def __post_init__(self) -> None:
        if self.k > len(self.pool):
            raise ValueError(f"few_shot k={self.k} but the training pool has only {len(self.pool)} examples")
        order = np.random.default_rng(self.seed).permutation(len(self.pool))[: self.k]
        object.__setattr__(self, "chosen", tuple(self.pool[i] for i in order))

    def __call__(self, example: Example) -> list[Example]:
        return list(self.chosen)  # type: ignore[attr-defined]


class NearestDemos:
    """The k training examples whose inputs are most similar to the query's, most similar last."""

    def __init__(self, pool: Sequence[Example], k: int, embed: Embed):
        if k > len(pool):
            raise ValueError(f"few_shot_knn k={k} but the training pool has only {len(pool)} examples")
        self.pool = list(pool)
        self.k = k
        self._embed = embed
        self._pool_vectors = embed([e.input for e in self.pool])  # [n_pool, dim]

    def __call__(self, example: Example) -> list[Example]:
        similarity = self._pool_vectors @ self._embed([example.input])[0]  # [n_pool]
        # Stable sort on -similarity: ties keep pool order, so retrieval is deterministic.
        nearest = np.argsort(-similarity, kind="stable")[: self.k]
        return [self.pool[i] for i in nearest[::-1]]


# Lucene's default English stop words (EnglishAnalyzer). Without them BM25 ranks by rare function
# words: over a corpus of "X is a city in Y" passages, "Which country is the city of Chaozhou in?"
# retrieved "Brazzaville is a city in Republic of the Congo" first, since "of" and "the" occur in few
# passages and so outweighed "chaozhou" (measured on the GeoNames cities corpus, 534 passages).
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)


def _words(text: str) -> list[str]:
    return [word for word in re.findall(r"\w+", text.lower()) if word not in STOP_WORDS]


class PassageRetriever:
    """Top-k corpus passages for a query's input, best match last (closest to the question)."""

    def __init__(self, passages: Sequence[str], top_k: int, method: str, embed: Embed | None = None):
        if not passages:
            raise ValueError("the context arm needs a non-empty corpus (data.corpus)")
        self.passages = list(passages)
        self.top_k = min(top_k, len(self.passages))
        self.method = method
        if method == "bm25":
            self._bm25 = BM25Okapi([_words(p) for p in self.passages])
        elif method == "embedding":
            if embed is None:
                raise ValueError("embedding retrieval needs an embedding model")
            self._embed = embed
            self._vectors = embed(self.passages)
        else:
            raise ValueError(f"unknown retriever {method!r}: use bm25 or embedding")

    def scores(self, query: str) -> np.ndarray:
        if self.method == "bm25":
            return np.asarray(self._bm25.get_scores(_words(query)))
        return self._vectors @ self._embed([query])[0]

    def __call__(self, example: Example) -> list[str]:
        best = np.argsort(-self.scores(example.input), kind="stable")[: self.top_k]
        return [self.passages[i] for i in best[::-1]]
