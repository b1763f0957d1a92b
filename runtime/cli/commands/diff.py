"""``mlops diff BASE [HEAD]``: what a change between two git refs does, as text, json or a PR comment."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import click

from compiler.diff import Diff, PolicyChange, ResourceDiff
from runtime.cli.app import Application, pass_app
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options, policies_option

SYMBOLS = {"added": "+", "changed": "~", "removed": "-"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summary_line(d: Diff) -> str:
    """``main..feature: 1 to add, 2 to change, 0 to destroy · policy: 1 new failure, 0 resolved``."""
    s = d.summary
    return (f"{d.base.label}..{d.head.label}: {s['added']} to add, {s['changed']} to change, "
            f"{s['removed']} to destroy · policy: {_plural(s['policy_new'], 'new failure')}, "
            f"{s['policy_resolved']} resolved")


def _policy_line(change: PolicyChange) -> str:
    r = change.result
    return f"{r.policy.id} ({r.policy.severity}) {r.address}: {r.message}"


def render_text(d: Diff) -> str:
    """Plain lines: ``~ models.churn will retrain: params.lr: 0.01 -> 0.02``, then policy changes."""
    lines = [f"mlops diff {d.base.label}..{d.head.label}"]
    for side in (d.base, d.head):
        if not side.present:
            lines.append(f"(no spec at {side.label})")
    for r in d.resources:
        detail = f": {'; '.join(r.reasons)}" if r.change == "changed" else ""
        lines.append(f"{SYMBOLS[r.change]} {r.address} {r.effect}{detail}")
    if not d.resources:
        lines.append("No resource changes.")
    lines.extend(f"new failure: {_policy_line(c)}" for c in d.new_failures)
    lines.extend(f"resolved: {_policy_line(c)}" for c in d.resolved)
    lines.append("")
    lines.append(summary_line(d))
    return "\n".join(lines) + "\n"


def render_json(d: Diff) -> str:
    return json.dumps(d.to_json(), indent=2, sort_keys=True) + "\n"


def _cell(text: str, code_spans: bool = False) -> str:
    """Text safe inside a markdown table cell (backticks kept only where ``code_spans``: policy messages)."""
    safe = html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")
    return safe if code_spans else safe.replace("`", "&#96;")


def _code(text: str) -> str:
    return f"<code>{_cell(text)}</code>"


def render_markdown(d: Diff) -> str:
    """A PR comment: the summary line, then collapsible changes, graph and policy sections."""
    out = [f"**mlops diff** {summary_line(d)}", ""]
    for side in (d.base, d.head):
        if not side.present:
            out += [f"_No spec at {_cell(side.label)}._", ""]
    if d.resources:
        out += [f"<details><summary>Changes ({len(d.resources)})</summary>", "",
                "| | Resource | Action | Why |", "| --- | --- | --- | --- |"]
        for r in d.resources:
            why = "<br>".join(_cell(reason) for reason in r.reasons)
            out.append(f"| {SYMBOLS[r.change]} | {_code(r.address)} | {_cell(r.effect)} | {why} |")
        out += ["", "</details>", ""]
        mermaid = render_mermaid(d)
        if mermaid:
            out += ["<details><summary>Affected part of the graph</summary>", "", "```mermaid", mermaid.rstrip(),
                    "```", "", "</details>", ""]
    else:
        out += ["No resource changes.", ""]
    if d.new_failures or d.resolved:
        title = f"Policy: {_plural(len(d.new_failures), 'new failure')}, {len(d.resolved)} resolved"
        out += [f"<details><summary>{title}</summary>", ""]
        for heading, changes in (("New failures", d.new_failures), ("Resolved", d.resolved)):
            if changes:
                out += [f"**{heading}**", "", "| Policy | Severity | Resource | Message |",
                        "| --- | --- | --- | --- |"]
                out += [f"| {_cell(c.result.policy.id)} | {c.result.policy.severity} | {_code(c.result.address)} "
                        f"| {_cell(c.result.message, code_spans=True)} |" for c in changes]
                out.append("")
        out += ["</details>", ""]
    out.append("<!-- mlops-diff -->")
    return "\n".join(out) + "\n"


_STYLES = {"added": "fill:#dafbe1,stroke:#1a7f37", "changed": "fill:#fff8c5,stroke:#9a6700",
           "removed": "fill:#ffebe9,stroke:#cf222e,stroke-dasharray:4 3"}


def render_mermaid(d: Diff) -> str:
    """The changed resources and their direct neighbours, changed ones styled; ``""`` when none is in the graph."""
    in_graph = {a for link in d.links for a in link}
    changed: dict[str, ResourceDiff] = {r.address: r for r in d.resources if r.nodes or r.address in in_graph}
    if not changed:
        return ""
    shown = set(changed)
    for a, b in d.links:
        if a in changed or b in changed:
            shown |= {a, b}
    ids = {address: f"r{i}" for i, address in enumerate(sorted(shown))}
    lines = ["flowchart LR"]
    for address in sorted(shown):
        r = changed.get(address)
        label = f"{SYMBOLS[r.change]} {address}<br/>{r.effect}" if r else address
        lines.append(f'  {ids[address]}["{label}"]')
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in d.links if a in shown and b in shown]
    for change, style in _STYLES.items():
        members = [ids[a] for a, r in sorted(changed.items()) if r.change == change]
        if members:
            lines += [f"  classDef {change} {style}", f"  class {','.join(members)} {change}"]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Diff], str]] = {"text": render_text, "json": render_json,
                                               "markdown": render_markdown}


@click.command("diff")
@click.argument("base")
@click.argument("head", required=False)
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default=None,
              help="Output format (default text; json with --json; markdown is a ready PR comment).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write the result to a file.")
@policies_option("A folder of extra policy packs (repeatable; read at each ref when inside the repository).")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes.")
@global_options
@pass_app
def diff_command(app: Application, base: str, head: str | None, fmt: str | None, output: str | None,
                 policy_dirs: tuple[str, ...], detailed_exitcode: bool) -> None:
    """What a change between two git refs does: resources, plan actions, policy results.

    BASE and HEAD are anything git names a commit by: a branch, tag or sha, HEAD~1, origin/main;
    BASE..HEAD and BASE...HEAD (from their merge base, as a pull request shows) work too. Without HEAD,
    BASE is compared with the working tree as it is on disk, uncommitted edits included. Nothing is
    checked out and no live state is read: a diff is between two specs. Exit 0 (2 with
    --detailed-exitcode when anything differs), 1 on an error.
    """
    from compiler.diff import diff
    from compiler.errors import MlopsError
    from compiler.gitref import WORKING_TREE, GitRepository, compile_side, split_range

    dirs = [Path(d) for d in policy_dirs]
    try:
        repository = GitRepository.containing(app.spec_path)
        base, head = split_range(base, head, repository)
        base_side = repository.side(base, dirs)
        if head is None:
            head_side = compile_side(app.spec_path, app.spec_file, WORKING_TREE, None, dirs)
        else:
            head_side = repository.side(head, dirs)
        result = diff(base_side, head_side)
    except MlopsError as error:
        app.fail(error)
    text = RENDERERS[fmt or ("json" if app.json_output else "text")](result)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        app.err.print(f"wrote {output}", markup=False)
    else:
        app.write(text)
    app.exit(ExitCode.CHANGES if detailed_exitcode and result.has_changes else ExitCode.OK)
