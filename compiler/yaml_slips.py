"""The commonest YAML slips, said in plain words at the place a person would look.

libyaml reports where its parser gave up, in parser terms: an extra space before a key is
``mapping values are not allowed in this context`` at a colon further right, a tab is ``found character
that cannot start any token``, an unclosed ``[`` is ``did not find expected ',' or ']'`` on a later line.
:func:`explain` looks at the text around such an error and, when it recognises the slip, says what is
wrong and how to fix it, placed at the extra indentation, the tab, or the opening bracket or quote. When
it does not recognise the slip it returns ``None`` and the loader reports libyaml's own words.

>>> message, line, column = explain("a: 1\\n b: 2\\n", "mapping values are not allowed in this context", None,
...                                 (1, 2), None)
>>> line, column, message.split(", so")[0]
(2, 1, "'b' is indented 1 space more than 'a' on line 1")
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_KEY = re.compile(r"""[ ]*(?:-[ ]+)*(?!-[ ])(?P<key>"[^"]*"|'[^']*'|[^\s#'"\[\]{},:][^#:\[\]{},]*?)[ ]*:(?:[ \t]|$)""")
"""A block mapping key at the start of a line (after any ``- `` list markers): ``  - name: value``."""
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
"""Line breaks as libyaml counts lines."""
_CLOSERS = {"[": "]", "{": "}"}
_WHAT = {"[": "list", "{": "mapping"}

Mark = tuple[int, int]
"""A 0-based (line, column), as libyaml's marks count them (columns in characters)."""
Found = tuple[str, Mark] | None


@dataclass(frozen=True)
class _Line:
    number: int  # 0-based
    text: str

    @property
    def indent(self) -> int:
        return len(self.text) - len(self.text.lstrip(" "))

    @property
    def is_content(self) -> bool:
        stripped = self.text.strip(" \t")
        return bool(stripped) and not stripped.startswith("#")

    @property
    def key(self) -> tuple[str, int, str] | None:
        """(key, its column, the rest of the line after ``key:``) when the line starts with a key."""
        match = _KEY.match(self.text)
        if not match:
            return None
        return match["key"].strip(), match.start("key"), self.text[match.end():].strip()


def _spaces(count: int) -> str:
    return f"{count} space" if count == 1 else f"{count} spaces"


def _indent(column: int) -> str:
    return f"indent it {_spaces(column)}" if column else "start it at the beginning of the line"


def _indent_like(column: int, key: str) -> str:
    return f"{_indent(column)}, like '{key}'"


def _char(lines: list[str], mark: Mark) -> str:
    line, column = mark
    return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""


def _line(lines: list[str], number: int) -> _Line | None:
    return _Line(number, lines[number]) if number < len(lines) else None


def explain(text: str, problem: str | None, context: str | None, problem_mark: Mark | None,
            context_mark: Mark | None) -> tuple[str, int, int] | None:
    """A plain-words message and its 1-based (line, column) for a libyaml syntax error, if it is a known slip."""
    if problem_mark is None:
        return None
    lines = _BREAKS.split(text)
    for rule in _RULES:
        try:
            found = rule(lines, problem or "", context or "", problem_mark, context_mark)
        except (IndexError, ValueError):  # marks that do not fit the text as expected: not a slip it knows
            found = None
        if found is not None:
            message, (line, column) = found
            return message, line + 1, column + 1
    return None


def _tab(lines: list[str], problem: str, context: str, at: Mark, context_mark: Mark | None) -> Found:
    """A tab where YAML wants indentation, which is spaces only."""
    if "tab" not in problem and _char(lines, at) != "\t":
        return None
    for number in [at[0], *range(at[0])]:  # the error's own line first, else the first such line above it
        line = _line(lines, number)
        if line is None or not line.is_content:
            continue
        leading = line.text[:len(line.text) - len(line.text.lstrip(" \t"))]
        if "\t" in leading:
            return ("a tab in the indentation: YAML indents with spaces only; replace the tab with spaces",
                    (number, leading.index("\t")))
    return None


def _reserved_character(lines: list[str], problem: str, context: str, at: Mark, context_mark: Mark | None) -> Found:
    """``@`` and a backquote are reserved: no plain value may start with them."""
    found = _char(lines, at)
    if "cannot start any token" not in problem or found not in ("@", "`"):
        return None
    return f"a value cannot start with '{found}' in YAML: put the value in quotes", at


def _unclosed_flow(lines: list[str], problem: str, context: str, at: Mark, opened: Mark | None) -> Found:
    """A ``[`` or ``{`` that is never closed, closed by the other kind of bracket, or missing a comma."""
    if not context.startswith("while parsing a flow") or opened is None:
        return None
    bracket = _char(lines, opened)
    if bracket not in _CLOSERS:
        return None
    closer, what = _CLOSERS[bracket], _WHAT[bracket]
    found = _char(lines, at)
    if found in ("]", "}") and found != closer:
        return (f"the {what} opened with '{bracket}' here is closed with '{found}' (line {at[0] + 1}, column "
                f"{at[1] + 1}): close it with '{closer}'", opened)
    opener_indent = _Line(opened[0], lines[opened[0]]).indent
    later = [_Line(n, lines[n]) for n in range(opened[0] + 1, min(at[0] + 1, len(lines)))]
    at_end = not any(_Line(n, lines[n]).is_content for n in range(at[0], len(lines)))
    if at[0] > opened[0] and (at_end or any(line.is_content and line.indent <= opener_indent for line in later)):
        return f"this '{bracket}' is never closed: add '{closer}' after the last item of the {what}", opened
    if found == ":":  # '{path: x pii: false}': the key before this colon needs a comma before it
        text = lines[at[0]]
        start = at[1]
        while start > 0 and text[start - 1] not in " \t,[{":
            start -= 1
        if start < at[1] and start > 0 and text[start - 1] in " \t":
            key = text[start:at[1]]
            return f"a ',' is missing before '{key}': separate the items of a {what} with commas", (at[0], start)
    return (f"expected ',' between the items of the {what} opened with '{bracket}' on line {opened[0] + 1}, or "
            f"'{closer}' to close it", at)


def _unclosed_quote(lines: list[str], problem: str, context: str, at: Mark, opened: Mark | None) -> Found:
    if not context.startswith("while scanning a quoted scalar") or "end of stream" not in problem or opened is None:
        return None
    quote = _char(lines, opened) or '"'
    return f"this quoted text is never closed: add the closing {quote} where the text ends", opened


def _missing_space_after_colon(lines: list[str], problem: str, context: str, at: Mark,
                               started: Mark | None) -> Found:
    """``project:churn``: without a space after its colon it is not a key."""
    if not context.startswith("while scanning a simple key") or started is None or started[0] >= len(lines):
        return None
    glued = _glued_key(lines[started[0]], started[1])
    if glued is None:  # a line of a '|' or '>' text indented no more than its key, read as a key with no colon
        line = _Line(started[0], lines[started[0]])
        return _in_block_text(lines, line, as_key=True) if line.indent == started[1] else None
    return glued[0], (started[0], glued[1])


def _glued_key(text: str, start: int = 0) -> tuple[str, int] | None:
    """The message and colon column for ``key:value`` (no space after the colon) at ``start``, if it is that."""
    match = re.match(r"[ ]*(?:-[ ]+)*([^\s:#'\"\[\]{},][^\s:#]*):(?=[^\s:])", text[start:])
    if not match:
        return None
    return (f"no space after the ':' of '{match[1]}': write '{match[1]}: ...' (YAML needs a space between a key's "
            "colon and its value)", start + match.end(1))


def _previous_content(lines: list[str], before: int) -> _Line | None:
    for number in range(min(before, len(lines)) - 1, -1, -1):
        line = _Line(number, lines[number])
        if line.is_content:
            return line
    return None


def _over_indent(line: _Line, label: str, above: _Line | None) -> Found:
    """``line`` indented further than the key above it, which has its value on its own line."""
    if above is None or above.key is None:
        return None
    key, column, value = above.key
    if not value or value[0] in "|>" or line.indent <= column:
        return None
    return (f"{label} is indented {_spaces(line.indent - column)} more than '{key}' on line {above.number + 1}, so "
            f"YAML reads it as part of the value of '{key}': {_indent_like(column, key)}", (line.number, column))


def _item_over_indent(line: _Line, above: _Line | None) -> Found:
    """A ``- `` item indented further than the item above it."""
    if above is None or not above.text[above.indent:].startswith("-") or above.indent >= line.indent:
        return None
    return (f"this '- ' item is indented {_spaces(line.indent - above.indent)} more than the item on line "
            f"{above.number + 1}: {_indent(above.indent)}, like the item above", (line.number, above.indent))


def _over_indented(lines: list[str], problem: str, context: str, at: Mark, context_mark: Mark | None) -> Found:
    """A key indented further than the key with a value above it (so read as that value's next line), or a
    value holding ``: `` on its key's own line."""
    line = _line(lines, at[0])
    if not problem.startswith("mapping values are not allowed") or line is None or line.key is None:
        return None
    key, column, value = line.key
    if value and column + len(key) < at[1]:  # the offending colon is inside the value
        return (f"the value of '{key}' contains ': ', which YAML reads as another key: put the value in quotes "
                f"({key}: \"{value}\")", (line.number, line.text.index(value, column + len(key) + 1)))
    above = _previous_content(lines, line.number)
    glued = _glued_key(above.text) if above is not None and above.key is None else None
    if above is not None and glued is not None:  # 'project:churn' above, read as the start of this key
        return glued[0], (above.number, glued[1])
    return _over_indent(line, f"'{key}'", above)


Entry = tuple[int, str, int]
"""Something a line starts at a column: (column, how to name it, 0-based line)."""


def _entries(line: _Line) -> list[Entry]:
    """What ``line`` starts, deepest first: its key, and the list items its ``- `` markers open."""
    key = line.key
    found: list[Entry] = [] if key is None else [(key[1], f"'{key[0]}'", line.number)]
    markers = re.match(r"(?:-[ ]+)*", line.text[line.indent:])
    for marker in re.finditer(r"-[ ]+", markers[0] if markers else ""):
        found.append((line.indent + marker.start(), "the '- ' item", line.number))
    return sorted(found, reverse=True)


def _levels(lines: list[str], before: int) -> list[Entry]:
    """The keys and list items that enclose line ``before``, deepest first."""
    levels: list[Entry] = []
    for number in range(min(before, len(lines)) - 1, -1, -1):
        line = _Line(number, lines[number])
        for entry in _entries(line) if line.is_content else []:
            if not levels or entry[0] < levels[-1][0]:
                levels.append(entry)
        if levels and levels[-1][0] == 0:
            break
    return levels


def _in_block_text(lines: list[str], line: _Line, as_key: bool = False) -> Found:
    """A line of a ``|`` or ``>`` text indented less than the text's first line (which ends the text there),
    or the first line of such a text not indented under its key."""
    above = _previous_content(lines, line.number)
    key = above.key if above is not None else None
    if above is not None and key is not None and key[2][:1] in ("|", ">") and line.indent <= key[1]:
        return (f"the text of '{key[0]}' (line {above.number + 1}) is indented {_spaces(line.indent)}, no more than "
                f"'{key[0]}' itself: indent its lines at least {_spaces(key[1] + 1)}", (line.number, line.indent))
    for number in range(line.number - 1, -1, -1):
        above = _Line(number, lines[number])
        if not above.is_content or above.indent > line.indent:
            continue
        key = above.key
        if key is None or not key[2] or key[2][0] not in "|>" or key[1] > line.indent \
                or (key[1] == line.indent and not as_key):
            return None
        first = _previous_content(lines, line.number)
        for candidate in range(number + 1, line.number):
            if _Line(candidate, lines[candidate]).is_content:
                first = _Line(candidate, lines[candidate])
                break
        if first is None or first.number == number:
            return None
        return (f"this line is indented {_spaces(line.indent)}, less than the first line of the text of '{key[0]}' "
                f"({_spaces(first.indent)}, line {first.number + 1}), which ends the text before it: indent every "
                f"line of the text {_spaces(first.indent)}", (line.number, line.indent))
    return None


def _between_levels(lines: list[str], problem: str, context: str, at: Mark, context_mark: Mark | None) -> Found:
    """A key or list item indented to neither of the levels around it, or further than a key that has a value."""
    line = _line(lines, at[0])
    if not context.startswith("while parsing a block mapping") or "expected key" not in problem or line is None:
        return None
    entries = [entry for entry in _entries(line) if entry[0] == at[1]] if line.is_content else []
    if not entries:
        return _in_block_text(lines, line) if line.is_content and line.indent == at[1] else None
    label = entries[0][1] if entries[0][1][0] == "'" else "this '- ' item"
    column = at[1]
    levels = _levels(lines, line.number)
    deeper = [level for level in levels if level[0] > column]
    shallower = [level for level in levels if level[0] < column]
    if not deeper:
        above = _previous_content(lines, line.number)
        return _over_indent(line, label, above) or (_item_over_indent(line, above) if label[0] != "'" else None)
    deep = min(deeper)
    options = f"{deep[1]} ({_spaces(deep[0])}, line {deep[2] + 1})"
    if shallower:
        shallow = max(shallower)
        options += f" or {shallow[1]} ({_spaces(shallow[0])}, line {shallow[2] + 1})"
    return (f"{label} is indented {_spaces(column)}, like none of the lines around it: {options}; indent it like "
            "the one it goes beside", (line.number, column))


def _key_among_list_items(lines: list[str], problem: str, context: str, at: Mark,
                          started: Mark | None) -> Found:
    """``b: 1`` at the indentation of a list's ``- `` items, or an item indented further than the one above."""
    line = _line(lines, at[0])
    if not context.startswith("while parsing a block collection") or "'-'" not in problem or line is None:
        return None
    if line.text[at[1]:at[1] + 2] in ("- ", "-") and line.indent == at[1]:
        return _item_over_indent(line, _previous_content(lines, line.number))
    if line.key is None or line.key[1] != at[1]:
        return None
    key, column, _ = line.key
    owner = next((level for level in _levels(lines, line.number) if level[0] < column and level[1][0] == "'"), None)
    if owner is None:
        return None
    return (f"'{key}' is a key where the list under {owner[1]} (line {owner[2] + 1}) expects its next '- ' item: "
            f"to make it a key beside {owner[1]}, {_indent(owner[0])}; to make it an item, start the line with '- '",
            (line.number, column))


def _indented_first_line(lines: list[str], problem: str, context: str, at: Mark, context_mark: Mark | None) -> Found:
    """The first key indented, the next ones not: the document was one mapping indented by mistake."""
    if "<document start>" not in problem:
        return None
    first = next((line for line in (_Line(n, text) for n, text in enumerate(lines)) if line.is_content), None)
    if first is None or first.indent == 0 or first.number >= at[0]:
        return None
    return (f"the first key is indented {_spaces(first.indent)}: top-level keys start at the beginning of the line",
            (first.number, 0))


_RULES: list[Callable[[list[str], str, str, Mark, Mark | None], Found]] = [
    _tab, _reserved_character, _unclosed_flow, _unclosed_quote, _missing_space_after_colon, _over_indented,
    _between_levels, _key_among_list_items, _indented_first_line,
]
