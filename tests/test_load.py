"""The YAML loader: positions of keys and values, and every way a file is refused safely."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compiler.errors import LoadError, Position
from compiler.load import MAX_FILE_BYTES, load_bytes, load_file, load_text


def _error(text: str, name: str = "m.yaml") -> LoadError:
    with pytest.raises(LoadError) as info:
        load_text(text, name)
    return info.value


def _only(error: LoadError) -> tuple[Position, str]:
    assert len(error.diagnostics) == 1, error.render()
    diagnostic = error.diagnostics[0]
    assert diagnostic.position is not None
    return diagnostic.position, diagnostic.message


# --- positions ---------------------------------------------------------------------------

POSITIONED = """\
apiVersion: mlops/v1
models:
  churn:
    params:
      lr: 0.01
    data: {train: features, eval: held_out}
owners:
  - team:ml
  -   user:ana
matrix: [[1, 2], [3, {k: v}]]
"""


@pytest.mark.parametrize(
    ("loc", "line", "column"),
    [
        (("apiVersion",), 1, 13),
        (("models", "churn", "params", "lr"), 5, 11),
        (("models", "churn", "params"), 5, 7),
        (("models", "churn", "data", "train"), 6, 19),
        (("models", "churn", "data", "eval"), 6, 35),
        (("owners", 0), 8, 5),
        (("owners", 1), 9, 7),
        (("matrix", 1, 0), 10, 19),
        (("matrix", 1, 1, "k"), 10, 26),
    ],
)
def test_value_positions_are_one_based_line_and_column(
    loc: tuple[str | int, ...], line: int, column: int
) -> None:
    doc = load_text(POSITIONED, "m.yaml")
    assert doc.position_of(loc) == Position("m.yaml", line, column)


@pytest.mark.parametrize(
    ("loc", "line", "column"),
    [
        (("apiVersion",), 1, 1),
        (("models", "churn"), 3, 3),
        (("models", "churn", "params", "lr"), 5, 7),
        (("models", "churn", "data", "eval"), 6, 29),
        (("matrix", 1, 1, "k"), 10, 23),
    ],
)
def test_key_positions_point_at_the_key(loc: tuple[str | int, ...], line: int, column: int) -> None:
    doc = load_text(POSITIONED, "m.yaml")
    assert doc.position_of(loc, key=True) == Position("m.yaml", line, column)


ENDS = """\
models:
  churn:
    params: {lr: 0.01, tags: [a, b]}
    description: |
      Predicts churn.
      Trained on EU customers.

    seed: "é7"   # a comment
# a comment after the mapping
owners:
  - team:ml
"""


@pytest.mark.parametrize(
    ("loc", "start", "end"),
    [
        (("models", "churn", "params", "lr"), (3, 18), (3, 22)),
        (("models", "churn", "params"), (3, 13), (3, 37)),  # a flow mapping ends after its brace
        (("models", "churn", "description"), (4, 18), (6, 31)),  # a literal block: its last line of text
        (("models", "churn", "seed"), (8, 11), (8, 15)),  # columns count characters, quotes included
        (("models", "churn"), (3, 5), (8, 15)),  # a block mapping ends with its last value, not at the comment
        (("owners",), (11, 3), (11, 12)),
    ],
)
def test_positions_know_where_each_node_ends(loc: tuple[str | int, ...], start: tuple[int, int],
                                             end: tuple[int, int]) -> None:
    position = load_text(ENDS, "m.yaml").position_of(loc)
    assert (position.line, position.column) == start
    assert (position.end_line, position.end_column) == end
    key = load_text(ENDS, "m.yaml").position_of(loc, key=True)
    assert key.end_line == key.line and key.end_column == key.column + len(str(loc[-1]))


def test_data_is_plain_python() -> None:
    doc = load_text(POSITIONED, "m.yaml")
    assert doc.data["models"]["churn"] == {
        "params": {"lr": 0.01},
        "data": {"train": "features", "eval": "held_out"},
    }
    assert doc.data["owners"] == ["team:ml", "user:ana"]
    assert doc.data["matrix"] == [[1, 2], [3, {"k": "v"}]]


def test_unknown_path_falls_back_to_nearest_ancestor() -> None:
    doc = load_text(POSITIONED, "m.yaml")
    assert doc.position_of(("models", "churn", "params", "missing")) == doc.position_of(
        ("models", "churn", "params")
    )
    assert doc.position_of(("nowhere", "at", "all")) == Position("m.yaml", 1, 1)


def test_load_file_names_the_file_by_its_display_name(tmp_path: Path) -> None:
    path = tmp_path / "mlops.yaml"
    path.write_text("a:\n  b: 1\n", encoding="utf-8")
    doc = load_file(path, "mlops.yaml")
    assert doc.file == "mlops.yaml"
    assert doc.position_of(("a", "b")) == Position("mlops.yaml", 2, 6)


# --- duplicate keys ----------------------------------------------------------------------


def test_duplicate_key_points_at_second_occurrence_and_names_first_line() -> None:
    position, message = _only(_error("project: p\nmodels:\n  m:\n    seed: 1\n    train: a:b\n    seed: 2\n"))
    assert position == Position("m.yaml", 6, 5)
    assert "duplicate key 'seed'" in message
    assert "line 4" in message


def test_same_key_in_sibling_mappings_is_not_a_duplicate() -> None:
    doc = load_text("a: {x: 1}\nb: {x: 2}\n", "m.yaml")
    assert doc.data == {"a": {"x": 1}, "b": {"x": 2}}


# --- unsafe and unsupported tags ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        (
            "project: p\nx: !!python/object/apply:os.system ['touch pwned']\n",
            "!!python/object/apply:os.system",
        ),
        (
            "project: p\nx: !!python/object/apply:os.system\n  args: ['touch pwned']\n",
            "!!python/object/apply",
        ),
        ("project: p\nx: !!python/name:os.system ''\n", "!!python/name:os.system"),
        ("project: p\nx: !!binary aGVsbG8=\n", "!!binary"),
        ("project: p\nx: !!set {a, b}\n", "!!set"),
        ("project: p\nx: !custom 1\n", "!custom"),
    ],
)
def test_unsafe_tags_are_refused_at_the_tagged_node(
    text: str, tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    position, message = _only(_error(text))
    assert position == Position("m.yaml", 2, 4)
    assert "unsupported YAML tag" in message and tag in message
    assert not (tmp_path / "pwned").exists()


# --- aliases -----------------------------------------------------------------------------

BILLION_LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


def test_alias_bomb_is_refused_quickly_with_a_position() -> None:
    started = time.perf_counter()
    error = _error(BILLION_LAUGHS)
    elapsed = time.perf_counter() - started
    position, message = _only(error)
    assert elapsed < 1.0
    assert "alias" in message
    assert position.file == "m.yaml"
    assert 2 <= position.line <= 9  # on one of the alias-repeating lines, not a file-level 1:1


def test_modest_aliases_and_merge_keys_are_allowed() -> None:
    text = (
        "defaults: &defaults\n  cpus: 1\n  memory: 2Gi\n"
        "a:\n  <<: *defaults\n  cpus: 4\n"
        "b:\n  <<: *defaults\n"
        "tags: &tags [x, y]\nmore: *tags\n"
    )
    doc = load_text(text, "m.yaml")
    assert doc.data["a"] == {"cpus": 4, "memory": "2Gi"}
    assert doc.data["b"] == {"cpus": 1, "memory": "2Gi"}
    assert doc.data["more"] == ["x", "y"]
    assert "<<" not in doc.data["a"]


def test_merge_key_position_of_an_explicit_key_is_its_own() -> None:
    doc = load_text("defaults: &d {cpus: 1, memory: 2Gi}\na:\n  <<: *d\n  cpus: 4\n", "m.yaml")
    assert doc.position_of(("a", "cpus")) == Position("m.yaml", 4, 9)
    assert doc.position_of(("a", "memory")) == Position("m.yaml", 1, 32)  # merged: where it is written


def test_merge_after_an_explicit_key_keeps_the_explicit_position() -> None:
    doc = load_text("defaults: &d {cpus: 1}\na:\n  cpus: 4\n  <<: *d\n", "m.yaml")
    assert doc.data["a"] == {"cpus": 4}
    assert doc.position_of(("a", "cpus")) == Position("m.yaml", 3, 9)
    assert doc.position_of(("a", "cpus"), key=True) == Position("m.yaml", 3, 3)


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a\n  b: *a\n", "a: &a {b: [1, {c: *a}]}\n"])
def test_recursive_alias_is_refused_with_a_position(text: str) -> None:
    position, message = _only(_error(text))
    assert "recursive alias" in message
    assert position.line == 1


# --- encodings and file shapes -----------------------------------------------------------


def test_non_utf8_points_at_the_bad_byte() -> None:
    with pytest.raises(LoadError) as info:
        load_bytes(b"project: p\nowner: caf\xe9 bar\n", "m.yaml")
    position, message = _only(info.value)
    assert position == Position("m.yaml", 2, 11)
    assert "UTF-8" in message and "0xe9" in message


def test_utf8_bom_is_accepted() -> None:
    doc = load_bytes("\ufeffproject: caf\u00e9\n".encode(), "m.yaml")
    assert doc.data == {"project": "caf\u00e9"}


@pytest.mark.parametrize("text", ["", "\n\n", "   \n  \n", "# only a comment\n  # another\n"])
def test_empty_or_comment_only_file_is_refused(text: str) -> None:
    position, message = _only(_error(text))
    assert position == Position("m.yaml", 1, 1)
    assert "empty" in message


def test_file_over_10_mb_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:  # sparse: no 10 MB written to disk
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(LoadError) as info:
        load_file(path, "big.yaml")
    position, message = _only(info.value)
    assert position == Position("big.yaml", 1, 1)
    assert "10 MB" in message
    assert MAX_FILE_BYTES == 10 * 1024 * 1024


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no such file"):
        load_file(tmp_path / "absent.yaml")


def test_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="directory"):
        load_file(tmp_path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_document_is_refused(text: str) -> None:
    position, message = _only(_error(text))
    assert position == Position("m.yaml", 1, 1)
    assert "mapping" in message


def test_multiple_documents_are_refused_at_the_second() -> None:
    position, message = _only(_error("project: a\n---\nproject: b\n"))
    assert position.line == 2
    assert "single document" in message


def test_syntax_error_is_positioned() -> None:
    position, message = _only(_error("a: 1\nb: [1, 2\nc: 3\n"))
    assert message.startswith("invalid YAML")
    assert position.line >= 2


JARGON = ("while parsing", "while scanning", "did not find expected", "cannot start any token",
          "mapping values are not allowed", "could not find expected")


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        pytest.param("project: p\nmodels:\n  m:\n    train: a:b\n     seed: 1\n", 5, 5,
                     "'seed' is indented 1 space more than 'train' on line 4, so YAML reads it as part of the value "
                     "of 'train': indent it 4 spaces, like 'train'", id="an extra space before a key"),
        pytest.param("project: p\nmodels:\n  m:\n    train: a:b\n   seed: 1\n", 5, 4,
                     "'seed' is indented 3 spaces, like none of the lines around it: 'train' (4 spaces, line 4) or "
                     "'m' (2 spaces, line 3)", id="a key between two indentation levels"),
        pytest.param("project: p\nmodels:\n  m:\n\ttrain: a:b\n", 4, 1,
                     "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces",
                     id="a tab"),
        pytest.param("project: p\nmodels:\n  m:\n    \ttrain: a:b\n", 4, 5,
                     "a tab in the indentation", id="a tab after spaces"),
        pytest.param("project: p\nowners: [team:a, team:b\nmodels: {}\n", 2, 9,
                     "this '[' is never closed: add ']' after the last item of the list", id="an unclosed bracket"),
        pytest.param("a: 1\nb: [1, 2\nc: 3\n", 2, 4, "this '[' is never closed", id="an unclosed bracket mid-file"),
        pytest.param("project: p\nowners: [team:a, team:b\n", 2, 9, "this '[' is never closed",
                     id="an unclosed bracket at the end"),
        pytest.param("project: p\nresources: {cpus: 1\nseed: 2\n", 2, 12, "this '{' is never closed",
                     id="an unclosed brace"),
        pytest.param("sweep: {lr: [0.1, 0.2}\n", 1, 13, "closed with '}' (line 1, column 22): close it with ']'",
                     id="a bracket closed by a brace"),
        pytest.param("resources: {cpus: 1 memory: 2Gi}\n", 1, 21, "a ',' is missing before 'memory'",
                     id="a missing comma"),
        pytest.param("project: 'churn\nseed: 1\n", 1, 10, "this quoted text is never closed: add the closing '",
                     id="an unclosed quote"),
        pytest.param("project:churn\nseed: 1\n", 1, 8, "no space after the ':' of 'project'",
                     id="no space after a colon"),
        pytest.param("seed: 1\nproject:churn\nowners: [a]\n", 2, 8, "no space after the ':' of 'project'",
                     id="no space after a colon, after a key"),
        pytest.param("description: ratio: 2 to 1\n", 1, 14, "the value of 'description' contains ': '",
                     id="a colon in a value"),
        pytest.param("owners:\n  - team:a\n  seed: 1\n", 3, 3,
                     "'seed' is a key where the list under 'owners' (line 1) expects its next '- ' item",
                     id="a key among list items"),
        pytest.param("checks:\n  - {metric: auc}\n   - {metric: f1}\n", 3, 3,
                     "this '- ' item is indented 1 space more than the item on line 2: indent it 2 spaces",
                     id="a list item indented further"),
        pytest.param(" project: p\nseed: 1\n", 1, 1, "the first key is indented 1 space", id="an indented first key"),
    ],
)
def test_yaml_slips_are_said_in_plain_words_where_a_person_would_look(text: str, line: int, column: int,
                                                                     words: str) -> None:
    position, message = _only(_error(text))
    assert (position.line, position.column) == (line, column), message
    assert message.startswith("invalid YAML: ") and words in message
    assert not any(jargon in message for jargon in JARGON), message


def test_a_syntax_error_it_does_not_recognise_keeps_the_parsers_words_and_place() -> None:
    position, message = _only(_error("project: p\n- seed\n"))
    assert message.startswith("invalid YAML: ")
    assert position.line >= 2


# --- scalar typing -----------------------------------------------------------------------


def test_dates_stay_strings() -> None:
    doc = load_text("expires: 2027-01-31\nat: 2027-01-31T10:00:00Z\n", "m.yaml")
    assert doc.data == {"expires": "2027-01-31", "at": "2027-01-31T10:00:00Z"}


def test_yaml_11_boolean_words_as_keys_stay_strings() -> None:
    doc = load_text("on: push\nyes: 1\nno: 2\noff: 3\n", "m.yaml")
    assert doc.data == {"on": "push", "yes": 1, "no": 2, "off": 3}
    assert all(isinstance(key, str) for key in doc.data)
    assert doc.position_of(("no",), key=True) == Position("m.yaml", 3, 1)


def test_non_string_keys_become_their_text() -> None:
    doc = load_text("1: a\n0.5: b\nnull: c\n", "m.yaml")
    assert doc.data == {"1": "a", "0.5": "b", "null": "c"}


def test_scalars_keep_their_yaml_types() -> None:
    doc = load_text("i: 3\nf: 0.5\nb: true\nn: null\ns: '3'\n", "m.yaml")
    assert doc.data == {"i": 3, "f": 0.5, "b": True, "n": None, "s": "3"}
    assert isinstance(doc.data["s"], str)
