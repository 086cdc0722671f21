"""Loading, validation, splitting and overlap checks of task data (tuneorprompt.data)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow
import pyarrow.parquet
import pytest

from tuneorprompt.config import DataConfig
from tuneorprompt.data import DataError, Passage, find_overlap, load_corpus, load_splits
from tuneorprompt.records import Example, Splits

CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"),
]


def records(countries: list[tuple[str, str]], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "input": f"What is the capital of {country}?", "target": city}
        for i, (country, city) in enumerate(countries)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def three_files(tmp_path: Path, **overrides: list) -> DataConfig:
    """Disjoint train/dev/test JSONL files; `overrides` replaces one split's rows."""
    rows = {"train": records(CAPITALS[:6], "tr"), "dev": records(CAPITALS[6:8], "dv"),
            "test": records(CAPITALS[8:], "te")}
    rows.update(overrides)
    paths = {name: write_jsonl(tmp_path / f"{name}.jsonl", split_rows) for name, split_rows in rows.items()}
    return DataConfig(**paths)


def error_of(config: DataConfig) -> str:
    with pytest.raises(DataError) as caught:
        load_splits(config)
    return str(caught.value)


# ---- round trips -----------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_fields_order_and_location(tmp_path):
    splits, report = load_splits(three_files(tmp_path))
    assert [e.id for e in splits.train] == [f"tr{i}" for i in range(6)]
    first = splits.train[0]
    assert first == Example("tr0", "What is the capital of France?", ("Paris",), source=f"{tmp_path / 'train.jsonl'}:1")
    assert [e.target for e in splits.test] == ["Santiago", "Havana"]
    assert report.pairs == () and report.n_test == 2


def test_csv_round_trip_with_list_cell_and_multiline_quoted_input(tmp_path):
    frame = pd.DataFrame(
        {
            "qid": ["a", "b", "c"],
            "question": ["Capital of France?", "Line one\nline two?", "Capital of Peru?"],
            "answer": ['["Paris", "City of Paris"]', "Rome", "Lima"],
        }
    )
    for name in ("train", "dev", "test"):
        sub = frame.assign(qid=[f"{name}-{q}" for q in frame.qid], question=[f"{name}: {q}" for q in frame.question])
        sub.to_csv(tmp_path / f"{name}.csv", index=False)
    config = DataConfig(
        train=tmp_path / "train.csv", dev=tmp_path / "dev.csv", test=tmp_path / "test.csv",
        fields={"input": "question", "target": "answer", "id": "qid"},
    )
    splits, _ = load_splits(config)
    assert splits.train[0].targets == ("Paris", "City of Paris")
    assert splits.train[1].input == "train: Line one\nline two?"
    # The header is line 1; the record after the two-line quoted cell starts on line 5.
    assert splits.train[2].source.endswith("train.csv:5")
    assert splits.dev[2].id == "dev-c"


def test_parquet_round_trip_with_native_list_targets(tmp_path):
    rows = records(CAPITALS, "p")
    rows[0]["target"] = ["Paris", "City of Paris"]
    for row in rows[1:]:
        row["target"] = [row["target"]]
    pd.DataFrame(rows).to_parquet(tmp_path / "all.parquet")
    splits, _ = load_splits(DataConfig(file=tmp_path / "all.parquet", split={"train": 0.6, "dev": 0.2, "test": 0.2}))
    by_id = {e.id: e for e in splits.train + splits.dev + splits.test}
    assert by_id["p0"].targets == ("Paris", "City of Paris")
    assert by_id["p3"].targets == ("Berlin",)
    assert by_id["p3"].source.endswith("all.parquet row 4")


def test_list_targets_are_stripped_and_first_is_reference(tmp_path):
    test = records(CAPITALS[8:], "te")
    test[0]["target"] = ["  Santiago ", "Santiago de Chile"]
    splits, _ = load_splits(three_files(tmp_path, test=test))
    assert splits.test[0].targets == ("Santiago", "Santiago de Chile")
    assert splits.test[0].target == "Santiago"


def test_ids_from_row_numbers_when_id_column_is_absent(tmp_path):
    strip = lambda rows: [{k: v for k, v in r.items() if k != "id"} for r in rows]  # noqa: E731
    config = three_files(
        tmp_path, train=strip(records(CAPITALS[:6], "")), dev=strip(records(CAPITALS[6:8], "")),
        test=strip(records(CAPITALS[8:], "")),
    )
    splits, _ = load_splits(config)
    assert [e.id for e in splits.test] == ["test-1", "test-2"]
    assert splits.train[5].id == "train-6"


def test_blank_lines_are_skipped_and_later_lines_keep_their_numbers(tmp_path):
    config = three_files(tmp_path)
    path = config.test
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n\n   \n" + lines[1] + "\n")
    splits, _ = load_splits(config)
    assert splits.test[1].source.endswith("test.jsonl:4")


# ---- validation errors -------------------------------------------------------------------------------


def test_malformed_json_and_non_object_lines_are_named_by_line(tmp_path):
    config = three_files(tmp_path)
    config.dev.write_text(config.dev.read_text() + '{"id": "dv9", "input": "x"\n[1, 2]\n')
    message = error_of(config)
    assert f"{config.dev}:3: malformed JSON" in message
    assert f"{config.dev}:4: expected a JSON object, got list" in message


def test_missing_fields_name_field_and_id(tmp_path):
    train = records(CAPITALS[:6], "tr")
    del train[2]["target"]
    del train[4]["input"]
    message = error_of(three_files(tmp_path, train=train))
    assert f"{tmp_path / 'train.jsonl'}:3: missing field 'target' (id 'tr2')" in message
    assert f"{tmp_path / 'train.jsonl'}:5: missing field 'input' (id 'tr4')" in message


def test_non_string_input_and_target_are_rejected(tmp_path):
    test = records(CAPITALS[8:], "te")
    test[0]["input"] = 42
    test[1]["target"] = 7
    message = error_of(three_files(tmp_path, test=test))
    assert "test.jsonl:1: field 'input' must be a string, got int 42 (id 'te0')" in message
    assert "test.jsonl:2: field 'target' must be a string (or a list of strings), got int 7 (id 'te1')" in message


@pytest.mark.parametrize(
    "target, complaint",
    [
        ("", "field 'target' is empty or whitespace only"),
        ("  \t", "field 'target' is empty or whitespace only"),
        ([], "field 'target' is an empty list"),
        (["Lima", " "], "field 'target' item 1 is empty or whitespace only"),
        (["Lima", None], "field 'target' item 1 must be a string"),
    ],
)
def test_empty_targets_are_rejected(tmp_path, target, complaint):
    dev = records(CAPITALS[6:8], "dv")
    dev[0]["target"] = target
    message = error_of(three_files(tmp_path, dev=dev))
    assert f"dev.jsonl:1: {complaint}" in message and "(id 'dv0')" in message


def test_duplicate_ids_within_and_across_splits(tmp_path):
    train = records(CAPITALS[:6], "tr")
    train[3]["id"] = "tr1"
    test = records(CAPITALS[8:], "te")
    test[1]["id"] = "tr0"
    message = error_of(three_files(tmp_path, train=train, test=test))
    assert f"train.jsonl:4: duplicate id 'tr1' (first at {tmp_path / 'train.jsonl'}:2)" in message
    assert f"test.jsonl:2: duplicate id 'tr0' (first at {tmp_path / 'train.jsonl'}:1)" in message


def test_empty_split_file_missing_file_and_unknown_extension(tmp_path):
    config = three_files(tmp_path)
    config.dev.write_text("\n")
    config = config.model_copy(update={"train": tmp_path / "nope.jsonl", "test": tmp_path / "test.txt"})
    message = error_of(config)
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in message
    assert f"{tmp_path / 'dev.jsonl'}: no examples" in message
    assert f"{tmp_path / 'test.txt'}: unknown file type '.txt'" in message


@pytest.mark.parametrize("name", ["train", "train.jsonl"])
def test_a_directory_given_as_a_data_file_is_named_as_one(tmp_path, name):
    # Not "no such file", nor "unknown file type ''" for a folder without a suffix.
    (tmp_path / name).mkdir()
    assert f"{tmp_path / name}: is a directory, not a data file" in error_of(DataConfig(file=tmp_path / name))
    with pytest.raises(DataError, match="is a directory, not a data file"):
        load_corpus(tmp_path / name)


def test_problems_are_collected_and_capped(tmp_path):
    train = records(CAPITALS[:6], "tr") * 5  # 30 rows, 24 of them repeat an id
    message = error_of(three_files(tmp_path, train=train))
    lines = message.splitlines()
    assert lines[0] == "invalid data (24 problems):"
    assert len(lines) == 1 + 20 + 1 and lines[-1].strip() == "... and 4 more"


def test_csv_errors_name_header_based_lines_and_columns(tmp_path):
    config = three_files(tmp_path)
    csv_test = tmp_path / "test.csv"
    csv_test.write_text('id,input,target\nq1,Capital of Chile?,Santiago\nq2,Capital of Cuba?\nq3,Capital of X?,"[""a"", 1]"\nq4,Odd?,[not json]\n')
    bad_columns = tmp_path / "dev.csv"
    bad_columns.write_text("id,question,target\nd1,Capital?,Lima\n")
    message = error_of(config.model_copy(update={"test": csv_test, "dev": bad_columns}))
    assert f"{csv_test}:3: expected 3 cells as in the header, found 2" in message
    assert f"{csv_test}:4: field 'target' item 1 must be a string" in message
    assert f"{csv_test}:5: field 'target' looks like a list but is not valid JSON" in message
    assert f"{bad_columns}: no column 'input' (columns: id, question, target)" in message


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    config = three_files(tmp_path)
    bom_test = tmp_path / "test.csv"
    bom_test.write_bytes(b"\xef\xbb\xbfid,input,target\nq1,Capital of Chile?,Santiago\n")
    splits, _ = load_splits(config.model_copy(update={"test": bom_test}))
    assert splits.test[0].id == "q1"


def test_non_utf8_csv_is_named_by_line_not_a_crash(tmp_path):
    # A Latin-1 spreadsheet export: the bad byte lies far past the csv reader's first read-ahead chunk.
    config = three_files(tmp_path)
    lines = [b"\xef\xbb\xbfid,input,target"] + [f"q{i},Capital of place {i}?,City {i}".encode() for i in range(2, 3000)]
    lines[1499] = b"q1500,Capital of S\xe3o Tom\xe9?,S\xe3o Tom\xe9"
    latin1 = tmp_path / "test.csv"
    latin1.write_bytes(b"\n".join(lines) + b"\n")
    message = error_of(config.model_copy(update={"test": latin1}))
    byte = lines[1499].index(b"\xe3")
    assert f"{latin1}:1500: not UTF-8 text (invalid continuation byte at byte {byte})" in message


def test_non_utf8_parquet_string_is_named_by_row_and_column(tmp_path):
    config = three_files(tmp_path)
    inputs = pyarrow.array([b"Capital of Chile?", b"Capital of S\xe3o Tom\xe9?"], type=pyarrow.binary())
    table = pyarrow.table({"id": ["q1", "q2"], "input": inputs.view(pyarrow.string()), "target": ["Santiago", "x"]})
    parquet = tmp_path / "test.parquet"
    pyarrow.parquet.write_table(table, parquet)  # pyarrow writes the bytes unchecked, as other writers may
    message = error_of(config.model_copy(update={"test": parquet}))
    assert f"{parquet} row 2, column 'input': not UTF-8 text (invalid continuation byte)" in message


def test_json_nested_too_deep_or_with_huge_numbers_is_named_by_line(tmp_path):
    config = three_files(tmp_path)
    config.dev.write_text(config.dev.read_text() + '{"id": ' + "9" * 5000 + "}\n" + '{"id": ' + "[" * 100_000 + "\n")
    message = error_of(config)
    assert f"{config.dev}:3: unreadable JSON (Exceeds the limit (4300 digits)" in message
    assert f"{config.dev}:4: unreadable JSON (maximum recursion depth exceeded" in message


def test_repeated_keys_in_a_json_record_are_named_by_line(tmp_path):
    # json.loads alone would keep the last "target" (or nested "a") and say nothing.
    config = three_files(tmp_path)
    config.dev.write_text(
        config.dev.read_text()
        + '{"id": "dv9", "input": "x", "target": "Paris", "target": "Rome"}\n'
        + '{"id": "dv10", "input": "y", "target": "Lima", "meta": {"a": 1, "a": 2}}\n'
    )
    message = error_of(config)
    assert f"{config.dev}:3: the key 'target' appears more than once in one JSON object" in message
    assert f"{config.dev}:4: the key 'a' appears more than once in one JSON object" in message


def test_explicit_id_column_must_exist(tmp_path):
    files = three_files(tmp_path)
    message = error_of(DataConfig(train=files.train, dev=files.dev, test=files.test, fields={"id": "qid"}))
    assert "train.jsonl:1: missing field 'qid' (the id)" in message


def test_split_too_small_for_fractions(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", records(CAPITALS[:2], "x"))
    assert "2 examples are too few to split" in error_of(DataConfig(file=path))


# ---- splitting ------------------------------------------------------------------------------------------


def test_split_by_seed_is_deterministic_disjoint_and_rounded(tmp_path):
    rows = [{"input": f"question {i}", "target": f"answer {i}"} for i in range(1, 26)]  # ids from rows
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    config = DataConfig(file=path, split={"train": 0.6, "dev": 0.2, "test": 0.2}, split_seed=3)
    first, _ = load_splits(config)
    again, _ = load_splits(config)
    other, _ = load_splits(config.model_copy(update={"split_seed": 4}))
    assert first == again
    assert first.test != other.test
    ids = [[e.id for e in split] for split in (first.train, first.dev, first.test)]
    assert [len(s) for s in ids] == [15, 5, 5]
    assert sorted(sum(ids, [])) == sorted(f"row-{i}" for i in range(1, 26))
    assert first.test[0].input == "question " + first.test[0].id.split("-")[1]
    # Within a split the file order is kept.
    assert ids[2] == sorted(ids[2], key=lambda i: int(i.split("-")[1]))


def test_max_test_keeps_the_first_items(tmp_path):
    splits, report = load_splits(three_files(tmp_path).model_copy(update={"max_test": 1}))
    assert [e.id for e in splits.test] == ["te0"]
    assert report.n_test == 1


# ---- overlap ------------------------------------------------------------------------------------------


def test_exact_and_normalised_overlap_is_refused_unless_allowed(tmp_path):
    test = records(CAPITALS[8:], "te")
    test[0]["input"] = "What is the capital of France?"  # exactly train tr0
    test[1]["input"] = "what is the capital   of italy"  # train tr1 after normalisation
    config = three_files(tmp_path, test=test)
    message = error_of(config)
    assert "2 of 2 test inputs also occur in train/dev (1 exact, 1 only after normalisation)" in message
    assert "test 'te0' = train 'tr0' (exact)" in message and "test 'te1' = train 'tr1' (normalised)" in message
    assert "allow_overlap" in message

    splits, report = load_splits(config.model_copy(update={"allow_overlap": True}))
    assert len(splits.test) == 2
    assert report.counts() == {"exact": 1, "normalised": 1, "any": 2}
    assert report.to_dict()["pairs"][0] == {"test_id": "te0", "split": "train", "id": "tr0", "match": "exact"}


def test_find_overlap_checks_dev_and_ignores_train_dev_pairs():
    make = lambda i, text: Example(i, text, ("x",))  # noqa: E731
    splits = Splits(
        train=[make("a", "Same in train and dev"), make("b", "Hello, World!")],
        dev=[make("c", "Same in train and dev"), make("d", "only dev")],
        test=[make("t1", "hello world"), make("t2", "ONLY DEV."), make("t3", "unrelated")],
    )
    report = find_overlap(splits)
    assert [(p.test_id, p.split, p.other_id, p.exact) for p in report.pairs] == [
        ("t1", "train", "b", False), ("t2", "dev", "d", False),
    ]
    assert report.test_ids() == ["t1", "t2"]


# ---- corpus -----------------------------------------------------------------------------------------------


def test_load_corpus_with_and_without_ids(tmp_path):
    with_ids = write_jsonl(tmp_path / "c1.jsonl", [{"id": "fr", "text": "Paris is in France."}, {"id": "it", "text": "Rome."}])
    without = write_jsonl(tmp_path / "c2.jsonl", [{"text": "Paris is in France."}, {"text": "Rome."}])
    assert load_corpus(with_ids) == [Passage("fr", "Paris is in France."), Passage("it", "Rome.")]
    assert [p.id for p in load_corpus(without)] == ["passage-1", "passage-2"]


def test_load_corpus_errors(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}, {"id": "b"}, {"id": "c", "text": ""}])
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(DataError) as caught:
        load_corpus(path)
    message = str(caught.value)
    assert f"{path}:2: duplicate id 'a'" in message
    assert f"{path}:3: missing field 'text' (id 'b')" in message
    assert f"{path}:4: field 'text' is empty (id 'c')" in message
    assert f"{path}:5: malformed JSON" in message
    with pytest.raises(DataError, match="must be a .jsonl file"):
        load_corpus(tmp_path / "c.csv")
