"""Property-based fuzzing of the loader and the spec model: any input gives a valid project or positioned diagnostics.

Arbitrary bytes and text, generated YAML (random token soup and random data dumped in random styles)
go to :func:`compiler.load.load_bytes` / :func:`~compiler.load.load_text`; mutations of
``examples/churn/mlops.yaml`` (at the data level: delete, replace, retype, rename, insert, cross-wire
references; and at the text level: delete, duplicate, swap, re-indent lines, splice junk) go through the
whole front end, :func:`compiler.load_project`, and, when they load, :func:`compiler.check_policies` and
:func:`compiler.build_graph`. The only acceptable outcomes are a result or an :class:`MlopsError` whose
every diagnostic names the file, a line and a column inside it. A handful of the mutants also go through
``mlops validate``: exit 1, one ``file:line:col: error:`` line per problem, never a traceback.

The runs are derandomized (the same examples on every run) and add up to over 1,000 examples.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compiler import build_graph, check_policies, load_project
from compiler.errors import MlopsError
from compiler.load import Document, load_bytes, load_text
from compiler.resolve import Project

ROOT = Path(__file__).resolve().parents[1]
CHURN_DIR = ROOT / "examples" / "churn"
CHURN_TEXT = (CHURN_DIR / "mlops.yaml").read_text(encoding="utf-8")
CHURN: dict[str, Any] = yaml.safe_load(CHURN_TEXT)
NAME = "fuzz.yaml"
BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
DIAGNOSTIC_LINE = re.compile(r"^\S.*:\d+:\d+: error: .+$")


def fuzz_settings(examples: int) -> settings:
    """Reproducible in CI: the same examples every run, no example database, no per-example deadline."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


def assert_positioned(error: MlopsError, text: str, file: str, size: int | None = None) -> None:
    """Every diagnostic names ``file`` and a line and column that exist in ``text`` (``size`` characters or
    bytes long: a column in undecodable bytes counts bytes)."""
    assert error.diagnostics, "an MlopsError without diagnostics"
    lines = len(BREAKS.findall(text)) + 2  # a position may point just past the last line break
    for diagnostic in error.diagnostics:
        position = diagnostic.position
        assert position is not None, f"no position: {diagnostic.render()}"
        assert position.file == file, diagnostic.render()
        assert 1 <= position.line <= lines, diagnostic.render()
        assert 1 <= position.column <= (len(text) if size is None else size) + 1, diagnostic.render()
        assert "\n" not in diagnostic.render() and "Traceback" not in diagnostic.render(), diagnostic.render()


def load_or_diagnose(raw: bytes | str) -> Document | None:
    """Load ``raw``; a refusal must be a positioned :class:`MlopsError` (anything else fails the test)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        return load_bytes(raw, NAME) if isinstance(raw, bytes) else load_text(raw, NAME)
    except MlopsError as error:
        assert_positioned(error, text, NAME, len(raw) if isinstance(raw, bytes) else None)
        return None


# --- the loader ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "data"), [("a:", {"a": None}), ("a: 1\nb:", {"a": 1, "b": None}),
                                            ("? ", {"": None})])
def test_an_empty_plain_value_at_the_very_end_of_the_file_is_null(text: str, data: dict[str, Any]) -> None:
    assert load_text(text, NAME).data == data


@pytest.mark.parametrize("text", ["a: !!int\n", "a: !!int ''\n", "a: !!float\n", "a: !!bool\n", "a: !!bool x\n"])
def test_an_explicitly_tagged_scalar_of_the_wrong_type_is_refused_at_its_place(text: str) -> None:
    with pytest.raises(MlopsError) as info:
        load_text(text, NAME)
    [diagnostic] = info.value.diagnostics
    assert diagnostic.position is not None and (diagnostic.position.line, diagnostic.position.column) == (1, 4)


def test_a_control_character_is_reported_on_one_line_at_its_place() -> None:
    with pytest.raises(MlopsError) as info:
        load_text("apiVersion: mlops/v1\nproject: a\x1fb\n", NAME)
    [diagnostic] = info.value.diagnostics
    assert diagnostic.position is not None and (diagnostic.position.line, diagnostic.position.column) == (2, 11)
    assert "\n" not in diagnostic.render() and "#x001f" in diagnostic.render()


def test_an_unknown_key_with_a_line_break_is_reported_on_one_line(repo: Path) -> None:
    spec = repo / "newline.yaml"
    spec.write_text('apiVersion: mlops/v1\nproject: p\n"bad\\nkey": 1\n', encoding="utf-8")
    with pytest.raises(MlopsError) as info:
        load_project(spec, NAME)
    [diagnostic] = info.value.diagnostics
    assert "\n" not in diagnostic.render() and "unknown key" in diagnostic.render()


def nested(depth: int, style: str) -> str:
    """``a:`` holding a list or mapping ``depth`` levels deep, in flow or block style."""
    if style == "flow-list":
        return "a: " + "[" * depth + "]" * depth + "\n"
    if style == "flow-map":
        return "a: " + "{b: " * depth + "1" + "}" * depth + "\n"
    return "a:\n" + "".join("  " * level + "b:\n" for level in range(1, depth + 1)) + "  " * (depth + 1) + "1\n"


@pytest.mark.parametrize("style", ["flow-list", "flow-map", "block-map"])
def test_a_document_nested_hundreds_of_levels_deep_is_refused_with_a_position(style: str) -> None:
    text = nested(600, style)
    with pytest.raises(MlopsError) as info:
        load_text(text, NAME)
    assert_positioned(info.value, text, NAME)


HUGE_HEX = "0x" + "f" * 3700
"""An integer of 4,455 decimal digits: Python will not turn it into text (``sys.get_int_max_str_digits``)."""


def test_an_integer_too_large_to_print_is_refused_at_its_place(repo: Path) -> None:
    text = CHURN_TEXT.replace("seed: 7", f"seed: {HUGE_HEX}")
    spec = repo / "huge.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(MlopsError) as info:
        build_graph(load_project(spec, NAME))
    assert_positioned(info.value, text, NAME)


def test_a_bad_byte_after_a_bom_is_the_one_named() -> None:
    with pytest.raises(MlopsError) as info:
        load_bytes(b"\xef\xbb\xbfproject: \x80\n", NAME)
    assert "(byte 0x80)" in info.value.diagnostics[0].render()


@fuzz_settings(250)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_load_or_give_positioned_diagnostics(raw: bytes) -> None:
    document = load_or_diagnose(raw)
    assert document is None or isinstance(document.data, dict)


@fuzz_settings(150)
@given(st.text(max_size=300))
def test_arbitrary_text_loads_or_gives_positioned_diagnostics(text: str) -> None:
    document = load_or_diagnose(text)
    assert document is None or isinstance(document.data, dict)


TOKENS = ["project", "apiVersion", "mlops/v1", "models", "datasets", "a", "b", "-", "- ", ": ", ":", "? ", "<<",
          "&a", "&b", "*a", "*b", "!!python/object/apply:os.system", "!!python/name:os.system", "!!binary",
          "!!set", "!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!map", "!!seq", "!custom", "!",
          "'q'", "'", '"d\\x41"', '"', "|", "|-", ">", "---", "...", "%YAML 1.1", "%TAG ! tag:x,2000:", "{", "}",
          "[", "]", ",", "#c", "\t", "@", "`", "~", "null", "yes", "0x1F", "1_000", "1:30", ".inf", ".nan",
          "2024-02-30", "1e9999", "-0", "é", "\ufeff", "\u2028", "\x85", "\r", HUGE_HEX, "0b" + "1" * 14500,
          "0o" + "7" * 5000]


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """Lines of YAML-ish tokens at random indents: anchors, aliases, tags, flow brackets, directives."""
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        indent = " " * draw(st.integers(0, 8))
        words = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5))
        glue = draw(st.sampled_from([" ", ": ", ", ", ""]))
        lines.append(indent + glue.join(words))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.dates().map(str))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4), max_leaves=20)


@st.composite
def dumped_data(draw: st.DrawFn) -> str:
    """Random data written by PyYAML in a random style, sometimes with an anchor and aliases spliced in."""
    data = draw(VALUES | st.dictionaries(st.sampled_from(list(CHURN)), VALUES, max_size=5))
    text = yaml.safe_dump(data, default_flow_style=draw(st.sampled_from([True, False, None])),
                          allow_unicode=draw(st.booleans()), width=draw(st.sampled_from([20, 80, 1000])))
    if draw(st.booleans()) and ": " in text:
        first = text.index(": ") + 2
        text = text[:first] + "&x " + text[first:] + "\nalias1: *x\nalias2: [*x, *x]\n"
    return text


@st.composite
def deep(draw: st.DrawFn) -> str:
    """A value nested up to past libyaml's own limit of 1,000 levels."""
    depth = draw(st.integers(1, 1100) | st.sampled_from([99, 100, 101, 499, 500, 999, 1000, 1001]))
    return nested(depth, draw(st.sampled_from(["flow-list", "flow-map", "block-map"])))


@fuzz_settings(200)
@given(token_soup() | dumped_data() | deep())
def test_generated_yaml_loads_or_gives_positioned_diagnostics(text: str) -> None:
    document = load_or_diagnose(text)
    assert document is None or isinstance(document.data, dict)


# --- the spec model: mutations of a valid spec ----------------------------------------------------------

Path_ = tuple[str | int, ...]


def node_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """The path of every node below ``node`` (not ``node`` itself)."""
    found: list[Path_] = []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        found.append((*prefix, key))
        found += node_paths(child, (*prefix, key))
    return found


def parent_of(data: Any, path: Path_) -> Any:
    for step in path[:-1]:
        data = data[step]
    return data


def names_in(spec: dict[str, Any]) -> list[str]:
    """Every resource name in the spec, for cross-wiring references."""
    sections = [spec.get(section) for section in ("datasets", "models", "gates", "deployments", "monitors")]
    return sorted({str(name) for section in sections if isinstance(section, dict) for name in section})


def retyped(value: Any) -> list[Any]:
    """The same value in other YAML types."""
    return [str(value), [value], {"value": value}, None, True, -1, 0.5, "", {}, []]


def typo(key: str) -> st.SearchStrategy[str]:
    """A near miss of ``key``: a character dropped, doubled or changed, or the case flipped."""
    if not key:
        return st.just("x")
    i = st.integers(0, len(key) - 1)
    return st.one_of(i.map(lambda n: key[:n] + key[n + 1:]), i.map(lambda n: key[:n] + key[n] + key[n:]),
                     i.map(lambda n: key[:n] + "z" + key[n + 1:]), st.just(key.upper()), st.just(key + "s"))


@st.composite
def mutated_spec(draw: st.DrawFn) -> dict[str, Any]:
    """The churn spec with one to three data-level mutations."""
    spec = copy.deepcopy(CHURN)
    for _ in range(draw(st.integers(1, 3))):
        paths = node_paths(spec)
        path = draw(st.sampled_from(paths))
        parent, key = parent_of(spec, path), path[-1]
        operation = draw(st.sampled_from(["delete", "replace", "retype", "rename", "insert", "refer", "copy"]))
        if operation == "delete":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(VALUES)
        elif operation == "retype":
            parent[key] = draw(st.sampled_from(retyped(parent[key])))
        elif operation == "rename" and isinstance(parent, dict):
            parent[draw(typo(str(key)) | st.text(max_size=10))] = parent.pop(key)
        elif operation == "insert" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=10) | st.sampled_from(list(CHURN)))] = draw(VALUES)
        elif operation == "refer":
            names = names_in(spec) or ["x"]
            name = draw(st.sampled_from(names))
            parent[key] = draw(st.sampled_from([name, [name], name.upper(), name[:-1] or "x"]))
        elif operation == "copy":  # another node's value, e.g. a model where a dataset belongs
            other = draw(st.sampled_from(paths))
            parent[key] = copy.deepcopy(parent_of(spec, other)[other[-1]])
    return spec


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """The churn spec's text with one to three line- or character-level mutations."""
    lines = CHURN_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            lines = ["\n"]
        i = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent", "splice", "cut",
                                          "value"]))
        if operation == "delete":
            del lines[i]
        elif operation == "duplicate":
            lines.insert(i, lines[i])
        elif operation == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif operation == "indent":
            lines[i] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + lines[i]
        elif operation == "dedent":
            lines[i] = lines[i][draw(st.integers(1, 4)):] or "\n"
        elif operation == "splice":
            at = draw(st.integers(0, len(lines[i])))
            junk = draw(st.sampled_from(TOKENS) | st.text(max_size=5))
            lines[i] = lines[i][:at] + junk + lines[i][at:]
        elif operation == "cut":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + lines[i][at + draw(st.integers(1, 10)):]
        elif ": " in lines[i]:  # a new value, junk or hostile, for the key on this line
            key = lines[i][:lines[i].index(": ") + 2]
            lines[i] = key + draw(st.sampled_from(TOKENS) | st.text(max_size=8)) + "\n"
    return "".join(lines)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding what the churn spec refers to: its data and its pipeline module."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / ".git").mkdir()
    (root / "data").mkdir()
    shutil.copyfile(CHURN_DIR / "data" / "transactions.csv", root / "data" / "transactions.csv")
    package = root / "examples" / "churn"
    package.mkdir(parents=True)
    (root / "examples" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    shutil.copyfile(CHURN_DIR / "pipeline.py", package / "pipeline.py")
    return root


def compile_or_diagnose(spec: Path, text: str) -> Project | None:
    """The whole front end on ``spec``: a project (policies checked, graph built) or positioned diagnostics."""
    try:
        project = load_project(spec, NAME)
    except MlopsError as error:
        assert_positioned(error, text, NAME)
        return None
    assert isinstance(project, Project)
    try:
        check_policies(project)
        build_graph(project)
    except MlopsError as error:
        assert_positioned(error, text, NAME)
    return project


def test_the_unmutated_spec_compiles(repo: Path) -> None:
    """The mutations start from a spec that is valid in this repository (else every mutant would fail)."""
    spec = repo / "mlops.yaml"
    spec.write_text(CHURN_TEXT, encoding="utf-8")
    project = compile_or_diagnose(spec, CHURN_TEXT)
    assert project is not None and check_policies(project).ok


@fuzz_settings(250)
@given(mutated_spec())
def test_mutated_specs_compile_or_give_positioned_diagnostics(repo: Path, spec: dict[str, Any]) -> None:
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    path = repo / "mlops.yaml"
    path.write_text(text, encoding="utf-8")
    compile_or_diagnose(path, text)


@fuzz_settings(200)
@given(mutated_text())
def test_mutated_spec_text_compiles_or_gives_positioned_diagnostics(repo: Path, text: str) -> None:
    path = repo / "mlops.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    compile_or_diagnose(path, text)


# --- the CLI ----------------------------------------------------------------------------------------------


@fuzz_settings(6)
@given(mutated_text() | mutated_spec().map(lambda s: yaml.safe_dump(s, sort_keys=False)))
def test_cli_validate_reports_a_mutant_in_diagnostic_lines_without_a_traceback(repo: Path, text: str) -> None:
    path = repo / "cli.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        load_project(path)
    except MlopsError as error:
        expected = len(error.diagnostics)
    else:
        assume(False)  # a mutant that loads: its policy report is checked elsewhere
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(path), "validate"], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == expected and all(DIAGNOSTIC_LINE.match(line) for line in lines), done.stderr
