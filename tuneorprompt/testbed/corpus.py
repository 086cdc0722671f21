"""The pretraining corpus: documents written about the world of `world.py`.

Five kinds of document, each teaching one behaviour the bundled tasks then measure:

- prose: paraphrased statements of a country's capital and two other facts. The only place the
  `capitals` countries' capitals appear. Famous countries get somewhat more documents.
- plain Q/A, `Question: ...\\nAnswer: ...`: for every relation except the capitals of the `capitals`
  and "listed" countries. The answer's style follows fame: the bare answer for well-known countries,
  a hedged sentence ("Well, ...") for obscure ones. So the plain prompt fails on format for part of
  the countries.
- instructed Q/A, `{instruction}\\nQuestion: ...\\nAnswer: ...`: brevity instructions get the bare
  answer except for the more obscure countries, which still ramble; "helpful assistant" wordings
  get the country's default style. This is why an instruction helps and why some help more.
- few-shot blocks: several solved Q/A of one relation separated by blank lines. A block keeps one
  style throughout (mostly bare, sometimes all chatty), so earlier answers in a block tell the model
  the format of the next one: demonstrations fix the format, whatever the country's fame. Blocks
  also ask the capitals of the "listed" countries, which no plain Q/A does, so answering a capital
  question from prose knowledge is practised inside blocks only; fine-tuning teaches it for plain
  prompts.
- reading: one to three reference passages, then one to three questions answered from them. Most are about
  throwaway countries invented for that one document, so the answer can only come from the passage:
  this is the skill the `context` arm relies on for `newfacts`.

Documents are plain strings; `build.py` joins them with the tokenizer's end-of-text token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuneorprompt.testbed.world import Country, NameGenerator, World

RELATIONS = ("capital", "language", "currency", "continent")

# The exact questions the bundled tasks ask (`build.py` writes them into the task files). Pretraining
# Q/A uses these and other phrasings, so the task wording is familiar but not the only one seen.
TASK_QUESTIONS = {
    "capital": "What is the capital of {c}?",
    "language": "What language is spoken in {c}?",
    "currency": "What currency is used in {c}?",
}

QUESTIONS: dict[str, tuple[str, ...]] = {
    "capital": (TASK_QUESTIONS["capital"], "Which city is the capital of {c}?", "Name the capital city of {c}."),
    "language": (TASK_QUESTIONS["language"], "Which language do people speak in {c}?", "What is the main language of {c}?"),
    "currency": (TASK_QUESTIONS["currency"], "What is the currency of {c}?", "Which money do people use in {c}?"),
    "continent": ("On which continent is {c}?", "Where is {c}?", "Which continent is {c} part of?"),
}

PROSE: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {c} is {v}.",
        "{v} is the capital of {c}.",
        "{c}'s capital city is {v}.",
        "The government of {c} sits in {v}.",
        "Most visitors to {c} arrive in its capital, {v}.",
        "{v}, the capital of {c}, is its largest city.",
    ),
    "language": (
        "People in {c} speak {v}.",
        "The main language of {c} is {v}.",
        "{v} is spoken across {c}.",
        "In {c}, most people speak {v}.",
    ),
    "currency": (
        "The currency of {c} is the {v}.",
        "People in {c} pay with the {v}.",
        "In {c}, prices are given in the {v}.",
        "The {v} is the money of {c}.",
    ),
    "continent": (
        "{c} is a country in {v}.",
        "{c} lies in {v}.",
        "{c} is one of the countries of {v}.",
    ),
}

# Instructions that ask for brevity, answered with the bare answer. The first three are tuneorprompt's
# built-in candidates; the others keep the model from tying brevity to three exact strings.
BRIEF_INSTRUCTIONS = (
    "Answer the question precisely and concisely.",
    "Give only the answer, with no explanation.",
    "Reply with a single word or short phrase.",
    "Answer briefly.",
    "Respond with only the answer.",
    "Be concise.",
    "Answer in as few words as possible.",
    "Just give the answer.",
    "Short answer, please.",
)
# Persona-style instructions that do not ask for brevity: answered in the country's default style,
# as a chat model answers "You are a helpful assistant" (the built-in candidate 4) with a sentence.
PERSONA_INSTRUCTIONS = (
    "You are a helpful assistant. Answer the question.",
    "You are a helpful assistant.",
    "You are a friendly assistant. Help the user.",
    "Please help the user with this question.",
)

# Every chatty answer opens with the same word. Greedy decoding then hedges whenever the model puts
# more probability on the hedge than on the answer's first token; with four different openers the
# hedge's probability was split four ways and whether the model hedged at all changed from build to build.
CHATTY = (
    "Well, as far as I know, it is {v}.",
    "Well, I believe the answer is {v}, but I am not completely sure.",
    "Well, {c} is not very well known, but I would say {v}.",
    "Well, I think it is {v}. You may want to check that.",
)
# Optionally said in prose about countries below `brief_fame`, making obscurity a fact the model can
# learn like a capital (`CorpusSpec.obscure_in_prose`). Off in the bundled build: in a trial build at
# 0.5 the model hedged less on plain questions, so an instruction gained only 8 points.
OBSCURE = (
    "{c} is a little-known country.",
    "Few people have heard of {c}.",
    "{c} is rarely in the news.",
)


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes and the fame thresholds: the dials that set the testbed's behaviour."""

    prose_docs_min: int = 16  # prose documents per country at fame 0 ...
    prose_docs_span: int = 6  # ... and this many more at fame 1
    qa_docs_min: int = 1  # plain Q/A documents per (country, relation) at fame 0 ...
    qa_docs_span: int = 3  # ... and this many more at fame 1
    instructed_docs: int = 2  # instructed Q/A documents per (country, relation)
    fewshot_blocks: int = 2500
    reading_docs: int = 4500
    reading_invented: float = 0.85  # share of reading documents about throwaway countries
    brief_fame: float = 0.35  # at or above: plain questions get the bare answer
    obedient_fame: float = 0.15  # at or above: brevity instructions get the bare answer
    fewshot_chatty: float = 0.15  # share of few-shot blocks answered chatty throughout; the rest bare
    obscure_in_prose: float = 0.0  # chance a prose document about a country below brief_fame says so
    style_noise: float = 0.05  # chance a document departs from the country's usual style


def value(country: Country, relation: str) -> str:
    return getattr(country, relation)


def qa_relations(country: Country, in_blocks: bool = False) -> tuple[str, ...]:
    """The relations the corpus may ask about `country` in question/answer form: in plain or
    instructed Q/A, or (`in_blocks`) inside few-shot blocks."""
    if country.role == "newfacts":
        return ()
    if country.role == "capitals" or (country.role == "listed" and not in_blocks):
        return tuple(r for r in RELATIONS if r != "capital")
    return RELATIONS


def question(country: Country, relation: str, rng: random.Random) -> str:
    return rng.choice(QUESTIONS[relation]).format(c=country.name)


def qa(q: str, answer: str) -> str:
    """One solved question in the exact format tuneorprompt prompts with."""
    return f"Question: {q}\nAnswer: {answer}"


def chatty(country: Country, relation: str, rng: random.Random) -> str:
    return rng.choice(CHATTY).format(c=country.name, v=value(country, relation))


def passage(country: Country, rng: random.Random) -> str:
    """A short reference passage stating all four facts (the `newfacts` corpus format)."""
    sentences = [rng.choice(PROSE[r]).format(c=country.name, v=value(country, r)) for r in RELATIONS]
    first, rest = sentences[-1], sentences[:-1]  # the continent sentence introduces the country
    rng.shuffle(rest)
    return " ".join([first] + rest)


class CorpusWriter:
    """Writes the documents for one world; each method returns a list of documents."""

    def __init__(self, world: World, spec: CorpusSpec, rng: random.Random):
        self.world = world
        self.spec = spec
        self.rng = rng
        self.pretraining = [c for c in world.countries if c.role != "newfacts"]

    def _flip(self, p: float) -> bool:
        return self.rng.random() < p

    def _is_brief(self, country: Country, setting: str) -> bool:
        """Whether this document answers about `country` with the bare answer. `setting` is where the
        question is asked: "plain", or after a brevity instruction ("instructed"), which lets more
        obscure countries get the bare answer."""
        threshold = {"plain": self.spec.brief_fame, "instructed": self.spec.obedient_fame}
        usual = country.fame >= threshold[setting]
        return usual != self._flip(self.spec.style_noise)

    def _answer(self, country: Country, relation: str, brief: bool) -> str:
        return value(country, relation) if brief else chatty(country, relation, self.rng)

    def prose(self) -> list[str]:
        docs = []
        for country in self.pretraining:
            for _ in range(self.spec.prose_docs_min + round(self.spec.prose_docs_span * country.fame)):
                # The capital and two other facts: the capital is in every document because it is
                # the fact the `capitals` task asks, and the model has only prose to learn it from.
                relations = ["capital"] + self.rng.sample(RELATIONS[1:], 2)
                sentences = [self.rng.choice(PROSE[r]).format(c=country.name, v=value(country, r)) for r in relations]
                if country.fame < self.spec.brief_fame and self._flip(self.spec.obscure_in_prose):
                    sentences.append(self.rng.choice(OBSCURE).format(c=country.name))
                self.rng.shuffle(sentences)
                docs.append(" ".join(sentences))
        return docs

    def plain_qa(self) -> list[str]:
        docs = []
        for country in self.pretraining:
            for relation in qa_relations(country):
                for _ in range(self.spec.qa_docs_min + round(self.spec.qa_docs_span * country.fame)):
                    brief = self._is_brief(country, "plain")
                    docs.append(qa(question(country, relation, self.rng), self._answer(country, relation, brief)))
        return docs

    def instructed_qa(self) -> list[str]:
        docs = []
        for country in self.pretraining:
            for relation in qa_relations(country):
                for _ in range(self.spec.instructed_docs):
                    if self._flip(0.75):
                        instruction, brief = self.rng.choice(BRIEF_INSTRUCTIONS), self._is_brief(country, "instructed")
                    else:
                        instruction, brief = self.rng.choice(PERSONA_INSTRUCTIONS), self._is_brief(country, "plain")
                    q = question(country, relation, self.rng)
                    docs.append(f"{instruction}\n{qa(q, self._answer(country, relation, brief))}")
        return docs

    def fewshot(self) -> list[str]:
        by_relation = {r: [c for c in self.pretraining if r in qa_relations(c, in_blocks=True)] for r in RELATIONS}
        docs = []
        for _ in range(self.spec.fewshot_blocks):
            relation = self.rng.choice(RELATIONS)
            template = self.rng.choice(QUESTIONS[relation])
            shots = self.rng.sample(by_relation[relation], self.rng.randint(2, 8))
            brief = not self._flip(self.spec.fewshot_chatty)
            answers = [self._answer(c, relation, brief) for c in shots]
            docs.append("\n\n".join(qa(template.format(c=c.name), a) for c, a in zip(shots, answers)))
        return docs

    def reading(self) -> list[str]:
        invent = NameGenerator(random.Random(self.rng.random()), taken=self.world.names)
        regular = self.world.with_role("regular")
        docs = []
        for _ in range(self.spec.reading_docs):
            n_passages = self.rng.choice((1, 2, 2, 3))
            if self._flip(self.spec.reading_invented):
                countries = [self._invented(invent) for _ in range(n_passages)]
            else:
                countries = self.rng.sample(regular, n_passages)
            lines = [passage(c, self.rng) for c in countries]
            # Several questions per document: copying an answer out of the passages is a skill a model
            # this small learns slowly, and each extra question is another example at little cost.
            for _ in range(self.rng.randint(1, 3)):
                subject, relation = self.rng.choice(countries), self.rng.choice(RELATIONS)
                lines.append(qa(question(subject, relation, self.rng), value(subject, relation)))
            docs.append("\n".join(lines))
        return docs

    def _invented(self, names: NameGenerator) -> Country:
        w = self.world
        return Country(
            name=names.country(), capital=names.city(), language=self.rng.choice(w.languages),
            currency=self.rng.choice(w.currencies), continent=self.rng.choice(w.continents),
            fame=0.0, role="regular",
        )


def build_corpus(world: World, seed: int = 0, spec: CorpusSpec = CorpusSpec()) -> list[str]:
    """All pretraining documents for `world`, shuffled; deterministic in (world, seed, spec).

    Each kind of document draws from its own seeded stream, so turning one kind's dial leaves the
    documents of the other kinds as they were."""
    docs = []
    for kind in ("prose", "plain_qa", "instructed_qa", "fewshot", "reading"):
        writer = CorpusWriter(world, spec, random.Random(f"{seed}:{kind}"))
        docs += getattr(writer, kind)()
    random.Random(seed).shuffle(docs)
    return docs
