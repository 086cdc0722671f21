"""A deterministic fictional world: countries with a capital, a language, a currency and a continent.

Every name is made of syllables, so no fact can be known from real-world text: whatever the testbed
model knows about a country it learnt from the corpus built from this world (see `corpus.py`).

Each country also has a hidden `fame` in [0, 1]. Fame is the testbed's one built-in dial and stands
for how common a fact is on the web: it sets how often a country is written about (long-tail
knowledge), and how its questions are answered when nobody asks for brevity (well-known countries
get the bare answer, obscure ones a chatty or hedged one). See `corpus.py` for both effects.

Countries play one of four roles, which decide what the corpus may say about them:
- "regular": every fact also appears in question/answer form, capitals included;
- "listed": like "capitals" below, except that their capitals are also asked inside few-shot blocks
  (lists of solved questions), as facts that the web states mostly in lists are;
- "capitals": the `capitals` task's countries: their capitals appear only in prose, never as Q/A,
  so the task asks the model to answer a kind of question it has only seen for other countries;
- "newfacts": absent from pretraining; described only in the `newfacts` task's reference corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Role = Literal["regular", "listed", "capitals", "newfacts"]

# Syllables for the name generator; kept pronounceable (consonant-vowel shapes) so the byte-level
# BPE tokenizer splits names into a few syllable-like pieces rather than single bytes.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st", "th", "sh", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "th")

_COUNTRY_ENDINGS = ("ia", "a", "or", "ana", "eth", "ora", "istan", "and", "ae", "uria")
_CITY_ENDINGS = ("ket", "grad", "ton", "holm", "ir", "abad", "ville", "pur", "mouth", "os")
_LANGUAGE_ENDINGS = ("ish", "ic", "ese", "an", "i")

N_LANGUAGES = 60
N_CURRENCIES = 60
N_CONTINENTS = 6


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    language: str
    currency: str
    continent: str
    fame: float  # hidden popularity in [0, 1]; see the module docstring
    role: Role


@dataclass(frozen=True)
class WorldSpec:
    """How many countries of each role the world has (the task sizes follow from these)."""

    n_regular: int = 100
    n_listed: int = 100
    n_capitals: int = 420  # split by the build into train pool / dev / test
    n_newfacts: int = 150


@dataclass(frozen=True)
class World:
    seed: int
    countries: tuple[Country, ...]
    continents: tuple[str, ...]
    languages: tuple[str, ...]
    currencies: tuple[str, ...]

    def with_role(self, role: Role) -> list[Country]:
        return [c for c in self.countries if c.role == role]

    @property
    def names(self) -> frozenset[str]:
        """Every name in the world (countries, cities, languages, currencies, continents)."""
        return frozenset(
            [n for c in self.countries for n in (c.name, c.capital)]
            + list(self.continents) + list(self.languages) + list(self.currencies)
        )


class NameGenerator:
    """Unique syllable names. Every name it returns differs from all earlier ones, case-insensitively."""

    def __init__(self, rng: random.Random, taken: frozenset[str] = frozenset()):
        self._rng = rng
        self._taken = {n.lower() for n in taken}

    def _syllable(self) -> str:
        return self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) + self._rng.choice(_CODAS)

    def _fresh(self, make) -> str:
        while True:
            name = make().capitalize()
            if name.lower() not in self._taken and 4 <= len(name) <= 14:
                self._taken.add(name.lower())
                return name

    def country(self) -> str:
        return self._fresh(lambda: "".join(self._syllable() for _ in range(self._rng.randint(1, 2))) + self._rng.choice(_COUNTRY_ENDINGS))

    def city(self) -> str:
        return self._fresh(lambda: "".join(self._syllable() for _ in range(self._rng.randint(1, 2))) + self._rng.choice(_CITY_ENDINGS))

    def language(self) -> str:
        return self._fresh(lambda: self._syllable() + self._rng.choice(_LANGUAGE_ENDINGS))

    def currency(self) -> str:
        # Currencies are lower-case common nouns ("the drel"), as real ones are ("the euro").
        return self._fresh(lambda: self._syllable() + self._rng.choice(("", "o", "a", "en"))).lower()

    def continent(self) -> str:
        return self._fresh(lambda: self._syllable() + self._syllable() + "a")


def make_world(seed: int = 0, spec: WorldSpec = WorldSpec()) -> World:
    """The world for `seed`: the same seed always gives the same countries in the same order."""
    rng = random.Random(seed)
    names = NameGenerator(rng)
    continents = tuple(names.continent() for _ in range(N_CONTINENTS))
    languages = tuple(names.language() for _ in range(N_LANGUAGES))
    currencies = tuple(names.currency() for _ in range(N_CURRENCIES))
    roles: list[Role] = ["regular"] * spec.n_regular + ["listed"] * spec.n_listed + ["capitals"] * spec.n_capitals + ["newfacts"] * spec.n_newfacts
    rng.shuffle(roles)
    countries = tuple(
        Country(
            name=names.country(),
            capital=names.city(),
            language=rng.choice(languages),
            currency=rng.choice(currencies),
            continent=rng.choice(continents),
            fame=round(rng.random(), 4),
            role=role,
        )
        for role in roles
    )
    return World(seed, countries, continents, languages, currencies)
