"""The malformed-spec corpus: every file in ``tests/malformed/`` is a realistic broken ``mlops.yaml``.

Its first line says what loading it must report::

    # expect: LINE:COL: fragment of the message

LINE and COL are 1-based and point into that file itself; the fragment must occur in the rendered
diagnostic (``address: message``), so it may name the resource as well. Each file is copied into a fresh
repository that holds everything a valid spec could refer to (``data/x.csv``, ``pipeline.py``, a
``data/link.csv`` symlink to a file outside the repository), so that the only error is the one
the file was written to show; the test also requires it to be the only diagnostic.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler import load_project
from compiler.errors import MlopsError

CORPUS = Path(__file__).resolve().parent / "malformed"
EXPECT = re.compile(rb"^# expect: (\d+):(\d+): (.+)$")
PIPELINE = '''"""Callables the corpus specs may name (signatures of runtime/context.py)."""

from runtime.context import RunContext, TrainResult


def build_features(ctx: RunContext) -> None:
    """Copy each input into the output directory."""
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx: RunContext) -> TrainResult:
    """A constant model."""
    return TrainResult(model={"bias": 0.0}, metrics={"auc": 0.5})


def evaluate(ctx: RunContext) -> dict[str, float]:
    """A constant score."""
    return {"auc": 0.5}
'''


@dataclass(frozen=True)
class Expectation:
    line: int
    column: int
    fragment: str


def expectation(path: Path) -> Expectation:
    """The ``# expect:`` header of a corpus file (read as bytes: some files are not valid UTF-8)."""
    first = path.read_bytes().split(b"\n", 1)[0]
    match = EXPECT.match(first)
    assert match, f"{path.name}: the first line must be '# expect: LINE:COL: fragment'"
    return Expectation(int(match[1]), int(match[2]), match[3].decode("utf-8"))


KNOWN_BUGS: dict[str, str] = {}
"""Cases whose expectation states what *should* be reported, pending a fix in the named module."""


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def cases() -> list[object]:
    return [pytest.param(path, id=path.stem, marks=[pytest.mark.xfail(reason=KNOWN_BUGS[path.stem], strict=True)])
            if path.stem in KNOWN_BUGS else pytest.param(path, id=path.stem) for path in corpus()]


def make_repository(tmp_path: Path) -> Path:
    """A repository with the data, code and out-of-tree symlink that the corpus specs refer to."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "x.csv").write_text("email,amount,country,churned\na@example.com,12.5,DE,0\n", encoding="utf-8")
    (repo / "pipeline.py").write_text(PIPELINE, encoding="utf-8")
    outside = tmp_path / "outside.csv"
    outside.write_text("amount\n1.0\n", encoding="utf-8")
    (repo / "data" / "link.csv").symlink_to(outside)
    return repo


def test_corpus_is_complete() -> None:
    files = corpus()
    assert len(files) >= 36
    numbers = [path.name.split("-", 1)[0] for path in files]
    assert len(set(numbers)) == len(numbers), "two corpus files share a number"
    for path in files:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", path.name), path.name
        expectation(path)


def test_byte_level_cases_really_hold_their_bytes() -> None:
    """Guard against an editor 'fixing' the two files whose point is their raw bytes."""
    with pytest.raises(UnicodeDecodeError):
        (CORPUS / "09-latin1-bytes.yaml").read_bytes().decode("utf-8")
    assert b"\x00" in (CORPUS / "10-nul-character.yaml").read_bytes()
    assert b"\t" in (CORPUS / "05-tab-indentation.yaml").read_bytes()


@pytest.mark.parametrize("source", cases())
def test_malformed_spec_is_reported_at_its_place(source: Path, tmp_path: Path) -> None:
    expected = expectation(source)
    repo = make_repository(tmp_path)
    spec = repo / source.name
    shutil.copyfile(source, spec)
    with pytest.raises(MlopsError) as info:
        load_project(spec)
    diagnostics = info.value.diagnostics
    assert diagnostics, "an MlopsError without diagnostics"
    first = diagnostics[0]
    assert first.position is not None, first.render()
    assert Path(first.position.file).name == source.name
    assert (first.position.line, first.position.column) == (expected.line, expected.column), first.render()
    assert expected.fragment in first.render(), first.render()
    assert [d.render() for d in diagnostics[1:]] == [], "the file should show exactly one problem"
    assert "Traceback" not in first.render()
