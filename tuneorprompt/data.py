"""Load, validate and split the task data, and check the test split for overlap with train/dev.

Files are JSONL, CSV or Parquet (chosen by extension). Every record maps to an `Example` through
`config.fields`: an input string, a target that is a string or a list of acceptable answers, and an
optional id. Problems are collected over all files and reported together (file, line, field, id), so
a user fixes a data file in one pass instead of one error per run.

Decisions a user may need to know:
- Files must be UTF-8 (a leading byte-order mark is allowed); the first byte that is not valid UTF-8
  is reported by line (JSONL, CSV) or by row and column (Parquet).
- Blank lines in JSONL and blank rows in CSV are skipped; they are not records.
- Locations are as an editor shows them: JSONL `file:line` (1-based); CSV `file:line` with the header
  on line 1 (a record spanning several lines is named by its first line); Parquet `file row N`
  (1-based, counting data rows).
- Targets are stripped of surrounding whitespace (the prompt's `answer_prefix` supplies the space
  before an answer); inputs are kept exactly as written, since they go into the prompt template.
- CSV has no list type: a target cell whose text starts with `[` and ends with `]` is read as a JSON
  list of acceptable answers (`["Paris", "City of Paris"]`) and must be one. A literal answer such as
  `[citation needed]` is therefore written as the JSON list `["[citation needed]"]`.
- Ids may be strings or integers. When the id field is switched off (`fields.id: null`) or the
  default `id` column does not occur in a file, ids are `<split>-<row>` (`train-1`, `test-12`; `row-7`
  for a single file split by seed), row counting data records from 1. An id column named explicitly
  in the config must exist. Ids must be unique within and across splits.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import pyarrow.parquet

from tuneorprompt.config import DataConfig, FieldMap, SplitFractions
from tuneorprompt.metrics import normalize_text
from tuneorprompt.records import Example, Splits

MAX_LISTED_PROBLEMS = 20
MAX_LISTED_OVERLAPS = 5
SPLIT_NAMES = ("train", "dev", "test")


class DataError(ValueError):
    """Data that cannot be used; the message names file, line, field and id of each problem."""


@dataclass(frozen=True)
class Passage:
    """A reference document for the `context` arm."""

    id: str
    text: str


# ---- reading files into raw records -----------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """The records of one file, before field mapping, in file order.

    A record that could not be read at all (malformed JSON, wrong cell count) stays in place as the
    text of its problem, so that problems are reported in line order with the field problems.
    """

    path: Path
    kind: str  # "jsonl", "csv" or "parquet"
    rows: list[tuple[str, dict[str, Any] | str]]  # (location such as "train.jsonl:4", record or problem)
    columns: frozenset[str] | None  # header / schema columns; None for JSONL, whose keys vary per line


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two values for one key without a word, so a record that says two
    # things about a field would silently lose one.
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def _parse_json_line(raw: bytes, first: bool) -> dict[str, Any] | str | None:
    """A JSONL line as a record, as the text of its problem, or None for a blank line."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8 text ({error.reason} at byte {error.start})"
    if not line.strip():
        return None
    try:
        record = json.loads(line, object_pairs_hook=_refuse_repeated_keys)
    except json.JSONDecodeError as error:
        return f"malformed JSON ({error.msg} at column {error.colno})"
    except _RepeatedKey as error:
        return f"the key {error.args[0]!r} appears more than once in one JSON object"
    except (ValueError, RecursionError) as error:  # an integer of over 4300 digits; nesting too deep to parse
        return f"unreadable JSON ({error})"
    return record if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"


def _read_jsonl(path: Path, problems: list[str]) -> _Table:
    # Decoded line by line so that a bad byte is reported with its line number.
    lines = enumerate(path.read_bytes().split(b"\n"), start=1)
    parsed = ((f"{path}:{number}", _parse_json_line(raw, number == 1)) for number, raw in lines)
    return _Table(path, "jsonl", [(where, row) for where, row in parsed if row is not None], columns=None)


def _decode_csv(path: Path, problems: list[str]) -> str | None:
    """The file's text, or None with the first undecodable byte's line recorded.

    Decoded whole before parsing: decoding while the csv reader reads would fail inside a read-ahead
    chunk, far from the line the bad byte is on.
    """
    raw = path.read_bytes()
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would stick to the first column.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # Line and byte as for JSONL; utf-8-sig counts error.start from after a byte-order mark.
        start = error.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line_start = raw.rfind(b"\n", 0, start) + 1
        line = raw.count(b"\n", 0, start) + 1
        problems.append(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {start - line_start})")
        return None


def _read_csv(path: Path, problems: list[str]) -> _Table:
    text = _decode_csv(path, problems)
    if text is None:
        return _Table(path, "csv", [], frozenset())
    rows: list[tuple[str, dict[str, Any] | str]] = []
    # newline="": the csv module sees line ends as written, so a quoted cell may hold a line break.
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        header = next(reader, None)
        if header is None:
            problems.append(f"{path}: empty CSV file (no header row)")
            return _Table(path, "csv", [], frozenset())
        if len(set(header)) != len(header):
            problems.append(f"{path}:1: repeated column names in the header {header}")
        start = reader.line_num + 1  # first line of the next record (a quoted cell may span lines)
        for cells in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not cells:  # blank line
                continue
            if len(cells) != len(header):
                rows.append((where, f"expected {len(header)} cells as in the header, found {len(cells)}"))
            else:
                rows.append((where, dict(zip(header, cells))))
    except csv.Error as error:
        problems.append(f"{path}:{reader.line_num}: malformed CSV ({error})")
    return _Table(path, "csv", rows, frozenset(header or ()))


def _read_parquet(path: Path, problems: list[str]) -> _Table:
    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as error:
        problems.append(f"{path}: cannot read Parquet ({error})")
        return _Table(path, "parquet", [], frozenset())
    try:
        # to_pylist keeps list columns as Python lists and nulls as None (pandas would give arrays and NaN).
        records = table.to_pylist()
    except UnicodeDecodeError as error:  # Parquet writers need not check that string columns hold UTF-8
        problems.append(f"{_undecodable_cell(path, table)}: not UTF-8 text ({error.reason})")
        return _Table(path, "parquet", [], frozenset(table.column_names))
    rows = [(f"{path} row {number}", record) for number, record in enumerate(records, start=1)]
    return _Table(path, "parquet", rows, frozenset(table.column_names))


def _undecodable_cell(path: Path, table: pyarrow.Table) -> str:
    """Where the first string that is not UTF-8 lies, found cell by cell (only once reading failed)."""
    for name in table.column_names:
        for number, value in enumerate(table.column(name), start=1):
            try:
                value.as_py()
            except UnicodeDecodeError:
                return f"{path} row {number}, column {name!r}"
    return str(path)


_READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_table(path: Path, problems: list[str], what: str) -> _Table | None:
    """The file's records, or None (with the problem recorded) when there are none to map."""
    reader = _READERS.get(path.suffix.lower())
    if path.is_dir():  # before the file type: a folder such as data/ has no suffix to complain of
        problems.append(f"{path}: is a directory, not a data file")
        return None
    if reader is None:
        problems.append(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(_READERS)}")
        return None
    if not path.is_file():
        problems.append(f"{path}: no such file")
        return None
    before = len(problems)
    table = reader(path, problems)
    if not table.rows:
        if len(problems) == before:  # an empty file, not an unreadable one
            problems.append(f"{path}: no {what}")
        return None
    return table


# ---- records -> examples ----------------------------------------------------------------------


def _field_present(table: _Table, name: str) -> bool:
    if table.columns is not None:
        return name in table.columns
    return any(isinstance(record, dict) and name in record for _, record in table.rows)


def _missing_columns(table: _Table, names: list[str], problems: list[str]) -> set[str]:
    """Columns absent from a CSV header / Parquet schema are reported once for the file, not per row."""
    if table.columns is None:
        return set()
    missing = {name for name in names if name not in table.columns}
    for name in sorted(missing):
        problems.append(f"{table.path}: no column {name!r} (columns: {', '.join(sorted(table.columns))})")
    return missing


def _parse_id(value: Any, where: str, field: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{where}: missing field {field!r} (the id)")
    elif isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.append(f"{where}: field {field!r} (the id) must be a string or an integer, got {value!r}")
    elif not str(value).strip():
        problems.append(f"{where}: field {field!r} (the id) is empty")
    else:
        return str(value)
    return None


def _parse_text(value: Any, where: str, field: str, about: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{where}: missing field {field!r}{about}")
    elif not isinstance(value, str):
        problems.append(f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r}{about}")
    elif not value.strip():
        problems.append(f"{where}: field {field!r} is empty{about}")
    else:
        return value
    return None


def _csv_cell_targets(value: str, where: str, field: str, about: str, problems: list[str]) -> Any:
    """A CSV cell that looks like a list must be a JSON list (see the module docstring)."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(
            f"{where}: field {field!r} looks like a list but is not valid JSON ({error.msg}); "
            f"write a list as [\"a\", \"b\"], or a literal answer in brackets as [\"[a]\"]{about}"
        )
        return None


def _parse_targets(value: Any, where: str, field: str, about: str, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        problems.append(f"{where}: missing field {field!r}{about}")
        return None
    answers = value if isinstance(value, list) else [value]
    if not answers:
        problems.append(f"{where}: field {field!r} is an empty list; give at least one acceptable answer{about}")
        return None
    for position, answer in enumerate(answers):
        label = f"field {field!r}" + (f" item {position}" if isinstance(value, list) else "")
        if not isinstance(answer, str):
            problems.append(
                f"{where}: {label} must be a string (or a list of strings), got {type(answer).__name__} "
                f"{answer!r}{about}"
            )
            return None
        if not answer.strip():
            problems.append(f"{where}: {label} is empty or whitespace only{about}")
            return None
    return tuple(answer.strip() for answer in answers)


def _register_id(item_id: str | None, where: str, seen_ids: dict[str, str], problems: list[str]) -> None:
    """`seen_ids` maps each id read so far (in every split) to its location; a repeat is a problem
    even when its record has other problems, so that one pass over the report finds them all."""
    if item_id is None:
        return
    if item_id in seen_ids:
        problems.append(f"{where}: duplicate id {item_id!r} (first at {seen_ids[item_id]})")
    else:
        seen_ids[item_id] = where


def _to_examples(
    table: _Table, fields: FieldMap, id_prefix: str, seen_ids: dict[str, str], problems: list[str]
) -> list[Example]:
    # An id column named in the config must exist; the default `id` may be absent (ids from row numbers).
    id_field = fields.id
    id_required = id_field is not None and "id" in fields.model_fields_set
    if id_field is not None and not id_required and not _field_present(table, id_field):
        id_field = None
    missing = _missing_columns(table, [fields.input, fields.target] + ([id_field] if id_field else []), problems)
    if missing:
        return []
    examples = []
    for row, (where, record) in enumerate(table.rows, start=1):
        if isinstance(record, str):
            problems.append(f"{where}: {record}")
            continue
        if id_field is None:
            example_id = f"{id_prefix}-{row}"
        else:
            example_id = _parse_id(record.get(id_field), where, id_field, problems)
        _register_id(example_id, where, seen_ids, problems)
        about = f" (id {example_id!r})" if example_id is not None else ""
        text = _parse_text(record.get(fields.input), where, fields.input, about, problems)
        raw_target = record.get(fields.target)
        if table.kind == "csv" and raw_target is not None:
            raw_target = _csv_cell_targets(raw_target, where, fields.target, about, problems)
            if raw_target is None:
                continue
        targets = _parse_targets(raw_target, where, fields.target, about, problems)
        if example_id is not None and text is not None and targets is not None:
            examples.append(Example(id=example_id, input=text, targets=targets, source=where))
    return examples


def _read_examples(
    path: Path, fields: FieldMap, id_prefix: str, seen_ids: dict[str, str], problems: list[str]
) -> list[Example]:
    table = _read_table(path, problems, what="examples")
    return [] if table is None else _to_examples(table, fields, id_prefix, seen_ids, problems)


def _raise_problems(problems: list[str]) -> None:
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    lines = [f"invalid data ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"]
    lines += [f"  {problem}" for problem in listed]
    if more:
        lines.append(f"  ... and {more} more")
    raise DataError("\n".join(lines))


# ---- splitting ------------------------------------------------------------------------------------


def split_by_seed(examples: list[Example], fractions: SplitFractions, seed: int, source: str = "data") -> Splits:
    """Shuffle with numpy's default_rng(seed) and cut into test, dev and train, in that order.

    Sizes: test = round(n * test), dev = round(n * dev), rounding halves up; train gets the rest.
    The test split is cut first, so changing only the train/dev fractions leaves it unchanged.
    Each split keeps the file order of its examples (so `max_test` keeps the first N in the file).
    """
    n = len(examples)
    n_test = math.floor(n * fractions.test + 0.5)
    n_dev = math.floor(n * fractions.dev + 0.5)
    n_train = n - n_test - n_dev
    if min(n_train, n_dev, n_test) < 1:
        raise DataError(
            f"{source}: {n} examples are too few to split with fractions train={fractions.train:g}, "
            f"dev={fractions.dev:g}, test={fractions.test:g} (sizes {n_train}/{n_dev}/{n_test}); "
            "every split needs at least one example"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n_test, n_test + n_dev])  # [test indices, dev indices, train indices]
    test, dev, train = ([examples[i] for i in np.sort(part)] for part in parts)
    return Splits(train=train, dev=dev, test=test)


# ---- overlap ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlapPair:
    test_id: str
    split: str  # "train" or "dev"
    other_id: str
    exact: bool  # True: identical input strings; False: equal only after `normalize_text`

    @property
    def match(self) -> str:
        return "exact" if self.exact else "normalised"


@dataclass(frozen=True)
class OverlapReport:
    """Test inputs that also occur in train or dev, exactly or after normalisation."""

    n_test: int
    pairs: tuple[OverlapPair, ...]

    def test_ids(self, exact: bool | None = None) -> list[str]:
        """Distinct overlapping test ids, in test order; `exact` filters by kind of match."""
        ids = [p.test_id for p in self.pairs if exact is None or p.exact == exact]
        return list(dict.fromkeys(ids))

    def counts(self) -> dict[str, int]:
        """Test items with an exact match, with a match only after normalisation, and with either."""
        return {
            "exact": len(self.test_ids(exact=True)),
            "normalised": len(self.test_ids(exact=False)),
            "any": len(self.test_ids()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_test": self.n_test,
            "counts": self.counts(),
            "pairs": [
                {"test_id": p.test_id, "split": p.split, "id": p.other_id, "match": p.match} for p in self.pairs
            ],
        }

    def describe(self, limit: int = MAX_LISTED_OVERLAPS) -> str:
        counts = self.counts()
        if not counts["any"]:
            return f"no test input occurs in train or dev ({self.n_test} test items checked)"
        shown = "; ".join(
            f"test {p.test_id!r} = {p.split} {p.other_id!r} ({p.match})"
            for p in self.pairs[:limit]
        )
        more = f"; ... {len(self.pairs) - limit} more pairs" if len(self.pairs) > limit else ""
        return (
            f"{counts['any']} of {self.n_test} test inputs also occur in train/dev "
            f"({counts['exact']} exact, {counts['normalised']} only after normalisation): {shown}{more}"
        )


def find_overlap(splits: Splits) -> OverlapReport:
    """Pairs (test item, train/dev item) with the same input, exactly or after `normalize_text`
    (lowercase, ASCII punctuation removed, whitespace collapsed). A pair identical as written is
    reported as exact only, not again as normalised."""
    by_normalised: dict[str, list[tuple[str, Example]]] = defaultdict(list)
    for name in ("train", "dev"):
        for example in getattr(splits, name):
            by_normalised[normalize_text(example.input)].append((name, example))
    pairs = tuple(
        OverlapPair(test.id, name, other.id, exact=other.input == test.input)
        for test in splits.test
        for name, other in by_normalised.get(normalize_text(test.input), [])
    )
    return OverlapReport(n_test=len(splits.test), pairs=pairs)


# ---- entry points ---------------------------------------------------------------------------------


def load_splits(config: DataConfig) -> tuple[Splits, OverlapReport]:
    """Read, validate and split the data; check test inputs against train/dev.

    Raises DataError listing every problem found, or the overlapping pairs unless
    `config.allow_overlap` (then the report is returned for the run to record). The overlap is
    checked on the test items actually evaluated, i.e. after `max_test`.
    """
    problems: list[str] = []
    seen_ids: dict[str, str] = {}
    if config.file is not None:
        examples = _read_examples(config.file, config.fields, "row", seen_ids, problems)
        _raise_problems(problems)
        splits = split_by_seed(examples, config.split, config.split_seed, source=str(config.file))
    else:
        parts = {
            name: _read_examples(getattr(config, name), config.fields, name, seen_ids, problems)
            for name in SPLIT_NAMES
        }
        _raise_problems(problems)
        splits = Splits(**parts)
    if config.max_test is not None:
        splits = replace(splits, test=splits.test[: config.max_test])
    report = find_overlap(splits)
    if report.pairs and not config.allow_overlap:
        raise DataError(
            f"test/train overlap: {report.describe()}\n"
            "Remove these items from the test split, or set data.allow_overlap: true to run anyway "
            "(the overlap is then recorded in the report)."
        )
    return splits, report


def load_corpus(path: Path) -> list[Passage]:
    """Reference passages from JSONL with a `text` field and an optional `id` (else `passage-<row>`)."""
    path = Path(path)
    problems: list[str] = []
    if path.suffix.lower() != ".jsonl" and not path.is_dir():  # _read_table says that a directory is one
        problems.append(f"{path}: the corpus must be a .jsonl file")
    table = None if problems else _read_table(path, problems, what="passages")
    passages: list[Passage] = []
    seen_ids: dict[str, str] = {}
    if table is not None:
        has_ids = _field_present(table, "id")
        for row, (where, record) in enumerate(table.rows, start=1):
            if isinstance(record, str):
                problems.append(f"{where}: {record}")
                continue
            passage_id = _parse_id(record.get("id"), where, "id", problems) if has_ids else f"passage-{row}"
            _register_id(passage_id, where, seen_ids, problems)
            about = f" (id {passage_id!r})" if passage_id is not None else ""
            text = _parse_text(record.get("text"), where, "text", about, problems)
            if passage_id is not None and text is not None:
                passages.append(Passage(passage_id, text))
    _raise_problems(problems)
    return passages
