"""The CI integration: the GitHub Actions and GitLab CI examples, the pre-commit hook, and `mlops init`'s workflow.

Every ``mlops ...`` line in the workflows is parsed by the real click commands (a renamed flag fails here),
both workflows are checked against their published JSON Schemas (vendored by check-jsonschema), and the
shell, JavaScript and Python glue in them is run: the pull-request steps against a starter project, the
comment scripts against recording stand-ins for the GitHub and GitLab APIs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any
from xml.etree import ElementTree as ET

import click
import pytest
import yaml

from compiler.starter import create_starter, github_workflow
from runtime.cli.app import Application
from runtime.cli.commands import COMMANDS
from runtime.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "examples" / "ci" / "github" / "mlops.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab" / ".gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
TEMPLATE = ROOT / "compiler" / "starter_files" / "github-workflow.yml.tmpl"
BIN = Path(sys.executable).parent
MLOPS = BIN / "mlops"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
"""A GitHub expression in an env value; the only one an mlops argument uses is ``github.base_ref`` (main)."""
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
# What the CI services set in a job's environment (the values here are examples).
GITHUB_RUNNER_ENV = {"RUNNER_TEMP": "/tmp/runner", "GITHUB_OUTPUT": "/tmp/runner/output"}
GITLAB_JOB_ENV = {"CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"}
GITLAB_KEYWORDS = {"workflow", "variables", "default", "stages", "include", "image", "services", "cache",
                   "before_script", "after_script"}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def github_triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """``on:`` — which YAML 1.1 (PyYAML) reads as the boolean key ``True``."""
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict)
    return triggers


def gitlab_jobs(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in pipeline.items() if name not in GITLAB_KEYWORDS and not name.startswith(".")}


def step_named(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(step for step in job["steps"] if step.get("name") == name)


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    return next(step for step in job["steps"] if step.get("uses", "").split("@")[0] == action)


# --- the mlops command lines in a script ----------------------------------------------------------------

def mlops_invocations(script: str, env: dict[str, str]) -> list[list[str]]:
    """The arguments of each ``mlops ...`` simple command in a shell script, variables expanded from ``env``.

    An unknown variable is an error (``Template.substitute``), so a misspelt ``$MLOPS_SPEC`` fails too.
    """
    found = []
    heredoc_end = None
    for line in script.splitlines():
        if heredoc_end is not None:  # the body of a here-document (the GitLab note's Python) is not shell
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        heredoc = HEREDOC.search(line)
        heredoc_end = heredoc.group(1) if heredoc else None
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        redirected = False
        for token in [*lexer, ";"]:
            if token in {";", "&&", "||", "|", "&"}:
                if command[:1] == ["mlops"]:
                    found.append([Template(arg).substitute(env) for arg in command[1:]])
                command, redirected = [], False
            elif token in {">", ">>", "<", ">&"}:
                redirected = True  # what follows is the redirection, not arguments
            elif not redirected:
                command.append(token)
    return found


def verb(argv: list[str]) -> str:
    """The command name in ``mlops ARGV``, after the global options."""
    rest = list(argv)
    while rest[0] in {"-f", "--file", "--json", "--no-color"}:
        rest = rest[2:] if rest[0] in {"-f", "--file"} else rest[1:]
    return rest[0]


def github_commands() -> list[tuple[str, str, list[str]]]:
    """(job, step name, argv) of every mlops invocation in the GitHub workflow."""
    workflow = load(GITHUB)
    result = []
    for job_name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" not in step:
                continue
            env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {}), **GITHUB_RUNNER_ENV}
            env = {k: EXPRESSION.sub("main", str(v)) for k, v in env.items()}
            for argv in mlops_invocations(step["run"], env):
                result.append((job_name, step.get("name", step["run"]), argv))
    return result


def gitlab_commands() -> list[tuple[str, str, list[str]]]:
    """(job, script line, argv) of every mlops invocation in the GitLab pipeline."""
    pipeline = load(GITLAB)
    result = []
    for job_name, job in gitlab_jobs(pipeline).items():
        env = {**pipeline.get("variables", {}), **job.get("variables", {}), **GITLAB_JOB_ENV}
        for line in job["script"]:
            for argv in mlops_invocations(line, {k: str(v) for k, v in env.items()}):
                result.append((job_name, line, argv))
    return result


def parse(argv: list[str]) -> tuple[list[str], dict[str, Any], Application]:
    """Parse ``mlops ARGV`` with the real command tree: (command path, the leaf's parameters, the app)."""
    app = Application()
    ctx = cli.make_context("mlops", list(argv), obj=app)
    command: click.Command = cli
    path = []
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        path.append(name)
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return path, ctx.params, app


COMMAND_LINES = [pytest.param(argv, id=f"{source}:{job}:{' '.join(argv)}")
                 for source, commands in (("github", github_commands()), ("gitlab", gitlab_commands()))
                 for job, _, argv in commands]


@pytest.mark.parametrize("argv", COMMAND_LINES)
def test_every_mlops_line_parses_with_the_real_cli(argv: list[str]) -> None:
    path, _, app = parse(argv)
    assert path and path[0] in COMMANDS
    assert app.spec_file == "mlops.yaml"


# --- GitHub Actions -------------------------------------------------------------------------------

def test_github_workflow_matches_the_published_schema() -> None:
    check_schema(GITHUB, "vendor.github-workflows")


def test_gitlab_pipeline_matches_the_published_schema() -> None:
    check_schema(GITLAB, "vendor.gitlab-ci")


def test_ci_examples_install_the_projects_own_distribution() -> None:
    """``pip install mlops`` would install an unrelated project (with no ``mlops`` command): both pipelines
    install this project's distribution, by the name pyproject.toml gives it."""
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == "mlops-gitops"
    github, gitlab = load(GITHUB), load(GITLAB)
    assert github["env"]["MLOPS_PACKAGE"] == name and gitlab["variables"]["MLOPS_PACKAGE"] == name
    installs = [step["run"] for job in github["jobs"].values() for step in job["steps"]
                if step.get("name") == "Install mlops"]
    assert len(installs) == 2 and all('pip install "$MLOPS_PACKAGE"' in run for run in installs)
    assert 'pip install --quiet "$MLOPS_PACKAGE"' in gitlab["default"]["before_script"]
    for path in (GITHUB, GITLAB, TEMPLATE):
        assert not re.search(r"pip install\s+(--\S+\s+)*['\"]?mlops(?![-\w])", path.read_text()), path


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(GITHUB.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout


def check_schema(path: Path, schema: str) -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_pull_requests_validate_upload_sarif_and_comment() -> None:
    workflow = load(GITHUB)
    triggers = github_triggers(workflow)
    assert "pull_request" in triggers and triggers["push"] == {"branches": ["main"]}
    check = workflow["jobs"]["check"]
    assert check["if"] == "github.event_name == 'pull_request'"
    assert check["permissions"]["pull-requests"] == "write"
    assert check["permissions"]["security-events"] == "write"
    assert step_using(check, "actions/checkout")["with"]["fetch-depth"] == 0
    commands = [(job, argv) for job, _, argv in github_commands() if job == "check"]
    assert [verb(argv) for _, argv in commands] == ["validate", "policy", "diff", "plan"]

    _, policy, _ = parse(next(argv for _, argv in commands if "policy" in argv))
    assert policy["fmt"] == "sarif"
    upload = step_using(check, "github/codeql-action/upload-sarif")
    assert upload["with"]["sarif_file"] == policy["output"]
    assert upload["if"].startswith("always()")
    assert step_named(check, "Policy check")["if"] == "always()"

    diff = next(argv for _, argv in commands if "diff" in argv)
    assert diff[diff.index("diff") + 1:diff.index("diff") + 3] == ["origin/main", "HEAD"]
    assert step_named(check, "Diff against the base branch")["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert diff[diff.index("--format") + 1] == "markdown"
    assert diff[diff.index("--output") + 1] == "diff.md"
    _, plan, _ = parse(next(argv for _, argv in commands if "plan" in argv))
    assert plan["detailed_exitcode"] is True

    comment = step_using(check, "actions/github-script")
    assert "createComment" in comment["with"]["script"] and "updateComment" in comment["with"]["script"]
    assert all("apply" not in argv for _, argv in commands)


def test_github_applies_only_on_main_one_run_at_a_time() -> None:
    workflow = load(GITHUB)
    apply_job = workflow["jobs"]["apply"]
    assert apply_job["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert apply_job["concurrency"] == {"group": "mlops-apply-${{ github.ref }}", "cancel-in-progress": False}
    commands = github_commands()
    assert [job for job, _, argv in commands if verb(argv) == "apply"] == ["apply"]
    steps = [(where, parse(argv)) for job, where, argv in commands if job == "apply"]
    assert [(where, path) for where, (path, _, _) in steps] == [("Validate", ["validate"]), ("Plan", ["plan"]),
                                                                ("Apply", ["apply"])]
    assert steps[1][1][1]["out_file"] == steps[2][1][1]["plan_file"] == "/tmp/runner/mlops.plan"


@pytest.fixture
def pull_request(starter: Path, tmp_path: Path) -> Path:
    """A checkout of a pull request on the starter: main (as origin/main) plus a commit that changes lr."""
    checkout = tmp_path / "checkout"
    shutil.copytree(starter, checkout, ignore=shutil.ignore_patterns(".mlops"))

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args], cwd=checkout,
                       check=True, capture_output=True, timeout=60)

    git("add", "-A")
    git("commit", "-q", "-m", "starter")
    git("clone", "-q", "--bare", ".", str(tmp_path / "origin.git"))
    git("remote", "add", "origin", str(tmp_path / "origin.git"))
    git("fetch", "-q", "origin")
    spec = checkout / "mlops.yaml"
    spec.write_text(spec.read_text().replace("lr: 0.05", "lr: 0.1"))
    git("commit", "-q", "-a", "-m", "raise the learning rate")
    return checkout


def test_github_pull_request_steps_run_on_a_pull_request(pull_request: Path) -> None:
    """The steps' shell as the runner runs it (bash -eo pipefail), with the mlops it installed on PATH."""
    workflow = load(GITHUB)
    check = workflow["jobs"]["check"]
    output = pull_request.parent / "github-output"
    output.write_text("")
    for name in ("Validate", "Policy check", "Diff against the base branch", "Plan", "Compose the comment"):
        step = step_named(check, name)
        env = {**os.environ, **workflow["env"], "GITHUB_OUTPUT": str(output), "PATH": f"{BIN}:{os.environ['PATH']}",
               "BASE_REF": "main"}
        if name == "Compose the comment":
            env["PLAN_EXIT"] = output.read_text().split("exitcode=")[1].strip()
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                cwd=pull_request, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    sarif = json.loads((pull_request / "mlops.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["tool"]["driver"]["name"] == "mlops"
    assert output.read_text() == "exitcode=2\n"  # a fresh state: the starter's resources are all to create
    comment = (pull_request / "comment.md").read_text()
    assert comment.startswith("<!-- mlops:pr-comment -->\n**mlops diff** origin/main..HEAD")
    assert "params.lr: 0.05 -&gt; 0.1" in comment
    assert "mlops plan (exit code 2)" in comment and "6 to create" in comment


def test_github_plan_step_fails_on_a_plan_error(starter: Path, tmp_path: Path) -> None:
    (tmp_path / "mlops.yaml").write_text((starter / "mlops.yaml").read_text().replace("train: features",
                                                                                      "train: featurs"))
    step = step_named(load(GITHUB)["jobs"]["check"], "Plan")
    env = {**os.environ, "MLOPS_SPEC": "mlops.yaml", "GITHUB_OUTPUT": str(tmp_path / "out"),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert (tmp_path / "out").read_text() == "exitcode=1\n"
    assert "unknown dataset 'featurs'" in (tmp_path / "plan.txt").read_text()


GITHUB_SCRIPT_HARNESS = """
const calls = [];
const existing = JSON.parse(process.env.EXISTING);
const github = {
  paginate: async (method, args) => { calls.push(['list', args]); return existing; },
  rest: { issues: {
    listComments: 'listComments',
    updateComment: async (args) => { calls.push(['update', args]); },
    createComment: async (args) => { calls.push(['create', args]); },
  } },
};
const context = { repo: { owner: 'acme', repo: 'churn' }, issue: { number: 7 } };
(async () => { %s })().then(() => console.log(JSON.stringify(calls)));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the github-script step")
@pytest.mark.parametrize("existing, expected", [
    ([{"id": 1, "user": {"type": "User"}, "body": "looks good"}], "create"),
    ([{"id": 1, "user": {"type": "User"}, "body": "<!-- mlops:pr-comment --> quoted by a person"},
      {"id": 9, "user": {"type": "Bot"}, "body": "<!-- mlops:pr-comment -->\nold"}], "update"),
])
def test_github_comment_script_creates_then_updates_one_comment(tmp_path: Path, existing: list[dict[str, Any]],
                                                                expected: str) -> None:
    script = step_using(load(GITHUB)["jobs"]["check"], "actions/github-script")["with"]["script"]
    (tmp_path / "comment.md").write_text("<!-- mlops:pr-comment -->\nthe diff\n")
    harness = tmp_path / "harness.js"
    harness.write_text(GITHUB_SCRIPT_HARNESS % script)
    result = subprocess.run(["node", str(harness)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "EXISTING": json.dumps(existing)})
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    assert calls[0] == ["list", {"owner": "acme", "repo": "churn", "issue_number": 7}]
    kind, args = calls[1]
    assert (kind, len(calls)) == (expected, 2)
    assert args["body"] == "<!-- mlops:pr-comment -->\nthe diff\n"
    assert args.get("comment_id", args.get("issue_number")) == (9 if expected == "update" else 7)


# --- GitLab CI ------------------------------------------------------------------------------------

def test_gitlab_merge_requests_validate_report_policy_and_post_the_diff() -> None:
    pipeline = load(GITLAB)
    rules = [rule["if"] for rule in pipeline["workflow"]["rules"]]
    assert rules == ['$CI_PIPELINE_SOURCE == "merge_request_event"', "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"]
    jobs = gitlab_jobs(pipeline)
    commands = gitlab_commands()
    assert [job for job, _, argv in commands if verb(argv) == "validate"] == ["validate"]

    reports = {params["fmt"]: params["output"] for job, _, argv in commands if verb(argv) == "policy"
               for path, params, _ in [parse(argv)]}
    assert set(reports) == {"sarif", "junit"}
    artifacts = jobs["policy"]["artifacts"]
    assert artifacts["when"] == "always" and artifacts["reports"]["junit"] == reports["junit"]
    assert reports["sarif"] in artifacts["paths"]

    diff_job = jobs["diff"]
    assert diff_job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert diff_job["variables"]["GIT_DEPTH"] == "0"
    diff = next(argv for job, _, argv in commands if "diff" in argv)
    assert diff[diff.index("diff") + 1:diff.index("diff") + 3] == ["origin/main", "HEAD"]
    assert diff[diff.index("--format") + 1] == "markdown" and diff[diff.index("--output") + 1] == "diff.md"
    assert any("plan" in argv and "--detailed-exitcode" in argv for job, _, argv in commands if job == "diff")
    assert "MLOPS_NOTE_TOKEN" in gitlab_note_script()


def test_gitlab_applies_only_on_the_default_branch_in_one_resource_group() -> None:
    jobs = gitlab_jobs(load(GITLAB))
    assert jobs["apply"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert jobs["apply"]["resource_group"] == "mlops-apply"
    parsed = [(job, path, params) for job, _, argv in gitlab_commands() if verb(argv) != "diff"
              for path, params, _ in [parse(argv)]]
    assert [job for job, path, _ in parsed if path == ["apply"]] == ["apply"]
    plan = next(params for job, path, params in parsed if job == "apply" and path == ["plan"])
    apply = next(params for job, path, params in parsed if path == ["apply"])
    assert plan["out_file"] == apply["plan_file"]


def test_gitlab_merge_request_jobs_run_on_a_pull_request(pull_request: Path) -> None:
    """The check stage's scripts in one shell each, as the runner runs them (bash -eo pipefail)."""
    pipeline = load(GITLAB)
    jobs = gitlab_jobs(pipeline)
    for name in ("validate", "policy", "diff"):
        env = {**os.environ, **pipeline["variables"], **jobs[name].get("variables", {}),
               "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("MLOPS_NOTE_TOKEN", None)
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                                 "\n".join(jobs[name]["script"])],
                                cwd=pull_request, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    junit = ET.parse(pull_request / jobs["policy"]["artifacts"]["reports"]["junit"]).getroot()
    assert junit.tag == "testsuites" and junit.find("testsuite/testcase") is not None
    assert json.loads((pull_request / "mlops.sarif").read_text())["version"] == "2.1.0"
    assert "params.lr: 0.05 -&gt; 0.1" in (pull_request / "diff.md").read_text()
    assert "6 to create" in (pull_request / "plan.txt").read_text()
    assert "MLOPS_NOTE_TOKEN is not set" in result.stdout


def test_gitlab_policy_job_fails_on_a_policy_error(pull_request: Path) -> None:
    spec = pull_request / "mlops.yaml"
    spec.write_text(spec.read_text().replace("pii: false", "pii: true"))  # GDPR errors
    pipeline = load(GITLAB)
    job = gitlab_jobs(pipeline)["policy"]
    env = {**os.environ, **pipeline["variables"], "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", "\n".join(job["script"])],
                            cwd=pull_request, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    failures = ET.parse(pull_request / "mlops-policy.xml").getroot().findall(".//failure")
    assert failures and json.loads((pull_request / "mlops.sarif").read_text())["runs"][0]["results"]


def gitlab_note_script() -> str:
    lines = next(line for line in gitlab_jobs(load(GITLAB))["diff"]["script"] if "<<'PY'" in line)
    return lines.split("<<'PY'\n", 1)[1].rsplit("PY\n", 1)[0]


class RecordingGitLab(BaseHTTPRequestHandler):
    """The merge request notes API (two pages of notes), recording each request."""

    pages: list[list[dict[str, Any]]] = []
    requests: list[tuple[str, str, str | None, Any]] = []

    def _reply(self, body: Any, next_page: str = "") -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Next-Page", next_page)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers.get("PRIVATE-TOKEN"), payload))
        return payload

    def do_GET(self) -> None:
        self._record()
        page = int(self.path.rsplit("page=", 1)[1])
        self._reply(self.pages[page - 1], str(page + 1) if page < len(self.pages) else "")

    def do_PUT(self) -> None:
        self._reply(self._record())

    def do_POST(self) -> None:
        self._reply(self._record())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gitlab_api() -> Iterator[tuple[str, type[RecordingGitLab]]]:
    handler = type("Handler", (RecordingGitLab,), {"pages": [], "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v4", handler
    finally:
        server.shutdown()
        server.server_close()


def run_note_script(tmp_path: Path, api: str, token: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "diff.md").write_text("## mlops diff\n1 to update\n")
    (tmp_path / "plan.txt").write_text("Plan: 0 to create, 1 to update\n")
    env = {"PATH": os.environ["PATH"], "CI_API_V4_URL": api, "CI_PROJECT_ID": "42", "CI_MERGE_REQUEST_IID": "7",
           "PLAN_EXIT": "2", **({"MLOPS_NOTE_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-c", gitlab_note_script()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("marked_page", [None, 2])
def test_gitlab_note_script_creates_then_updates_one_note(tmp_path: Path, gitlab_api: Any,
                                                          marked_page: int | None) -> None:
    api, handler = gitlab_api
    handler.pages = [[{"id": n, "body": f"note {n}"} for n in range(1, 101)], [{"id": 101, "body": "note"}]]
    if marked_page:
        handler.pages[marked_page - 1].append({"id": 555, "body": "<!-- mlops:mr-comment -->\nold"})
    result = run_note_script(tmp_path, api, "glpat-secret")
    assert result.returncode == 0, result.stderr
    notes = "/api/v4/projects/42/merge_requests/7/notes"
    assert [r[:3] for r in handler.requests[:2]] == [("GET", f"{notes}?per_page=100&page=1", "glpat-secret"),
                                                     ("GET", f"{notes}?per_page=100&page=2", "glpat-secret")]
    method, path, _, payload = handler.requests[-1]
    assert len(handler.requests) == 3
    assert (method, path) == (("PUT", f"{notes}/555") if marked_page else ("POST", notes))
    body = payload["body"]
    assert body.startswith("<!-- mlops:mr-comment -->\n## mlops diff\n1 to update\n")
    assert "mlops plan (exit code 2)" in body and "Plan: 0 to create, 1 to update" in body


def test_gitlab_note_script_without_a_token_posts_nothing(tmp_path: Path, gitlab_api: Any) -> None:
    api, handler = gitlab_api
    result = run_note_script(tmp_path, api, None)
    assert result.returncode == 0 and "MLOPS_NOTE_TOKEN is not set" in result.stdout
    assert handler.requests == []


# --- pre-commit -----------------------------------------------------------------------------------

def test_pre_commit_hook_runs_mlops_validate_on_spec_and_policy_changes() -> None:
    hooks = yaml.safe_load(HOOKS.read_text())
    hook = next(h for h in hooks if h["id"] == "mlops-validate")
    assert hook["entry"] == "mlops validate" and hook["language"] == "python" and hook["pass_filenames"] is False
    parse(shlex.split(hook["entry"])[1:])
    files = re.compile(hook["files"])
    for path in ("mlops.yaml", "mlops.yml", "examples/churn/mlops.yaml", "policies/baseline.yaml",
                 "team/policies/extra.yml"):
        assert files.search(path), path
    for path in ("pipeline.py", "mlops.yaml.bak", "my-mlops.yaml", "data/policies.csv", "README.md"):
        assert not files.search(path), path


def test_pre_commit_hook_entry_passes_a_valid_spec_and_fails_a_broken_one(starter: Path, tmp_path: Path) -> None:
    hook = next(h for h in yaml.safe_load(HOOKS.read_text()) if h["id"] == "mlops-validate")
    entry = [str(MLOPS), *shlex.split(hook["entry"])[1:]]
    valid = subprocess.run(entry, cwd=starter, capture_output=True, text=True, timeout=120)
    assert valid.returncode == 0, valid.stderr
    broken = tmp_path / "broken"
    shutil.copytree(starter, broken, ignore=shutil.ignore_patterns(".mlops"))
    spec = broken / "mlops.yaml"
    spec.write_text(spec.read_text().replace("model: churn\n    gates:", "model: chrn\n    gates:"))
    invalid = subprocess.run(entry, cwd=broken, capture_output=True, text=True, timeout=120)
    assert invalid.returncode == 1
    assert "deployments.churn-api" in invalid.stderr and "Traceback" not in invalid.stderr


# --- mlops init -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ci") / "demo"
    result = subprocess.run([str(MLOPS), "init", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return directory


def test_the_starter_template_is_the_example() -> None:
    assert TEMPLATE.read_bytes() == GITHUB.read_bytes()


def test_init_writes_the_example_workflow(starter: Path) -> None:
    assert (starter / ".github" / "workflows" / "mlops.yml").read_bytes() == GITHUB.read_bytes()


def test_init_in_a_subfolder_points_the_workflow_at_its_spec(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    create_starter(tmp_path / "teams" / "churn")
    written = (tmp_path / "teams" / "churn" / ".github" / "workflows" / "mlops.yml").read_text()
    assert written == github_workflow("teams/churn/mlops.yaml")
    changed = [(a, b) for a, b in zip(GITHUB.read_text().splitlines(), written.splitlines(), strict=True) if a != b]
    assert changed == [("  MLOPS_SPEC: mlops.yaml", "  MLOPS_SPEC: teams/churn/mlops.yaml")]
    spec = load_env(written)["MLOPS_SPEC"]
    result = subprocess.run([str(MLOPS), "-f", spec, "validate"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def load_env(workflow_text: str) -> dict[str, str]:
    env = yaml.safe_load(workflow_text)["env"]
    assert isinstance(env, dict)
    return env


# --- hosted runners: the state from a secret --------------------------------------------------------------

STATE_SECRETS = {"MLOPS_STATE_URL": "${{ secrets.MLOPS_STATE_URL }}", "PGPASSWORD": "${{ secrets.PGPASSWORD }}",
                 "AWS_ACCESS_KEY_ID": "${{ secrets.AWS_ACCESS_KEY_ID }}",
                 "AWS_SECRET_ACCESS_KEY": "${{ secrets.AWS_SECRET_ACCESS_KEY }}"}
TINY_SPEC = "apiVersion: mlops/v1\nproject: tiny\ndatasets:\n  raw: {path: data/raw.csv}\n"


def test_github_plans_and_applies_against_the_state_url_from_a_secret_and_shows_it_nowhere_else() -> None:
    workflow = load(GITHUB)
    with_state = [(job, step["name"]) for job, body in workflow["jobs"].items() for step in body["steps"]
                  if "MLOPS_STATE_URL" in step.get("env", {})]
    assert with_state == [("check", "Plan"), ("apply", "Plan"), ("apply", "Apply")]
    for job, name in with_state:
        assert step_named(workflow["jobs"][job], name)["env"] == STATE_SECRETS
    # the secrets reach those steps only: not the installs, not the third-party actions
    assert all("secrets." not in json.dumps(body.get("env", {})) for body in [workflow, *workflow["jobs"].values()])
    steps = [step for body in workflow["jobs"].values() for step in body["steps"]]
    assert sum("secrets." in json.dumps(step) for step in steps) == 3
    # every run on a hosted runner: no self-hosted runner is needed for lasting state any more
    assert workflow["jobs"]["check"]["runs-on"] == "ubuntu-latest"
    assert "self-hosted runner for apply, for a\n# state, artifact store or cluster that only your network" in \
        GITHUB.read_text()


def test_gitlab_jobs_take_the_state_url_from_the_ci_cd_variables() -> None:
    """GitLab puts a project's CI/CD variables in every job's environment: the pipeline must not shadow them."""
    pipeline = load(GITLAB)
    for scope in [pipeline, *gitlab_jobs(pipeline).values()]:
        assert not set(scope.get("variables", {})) & set(STATE_SECRETS), scope.get("variables")
    text = GITLAB.read_text()
    assert "CI/CD variable\n# MLOPS_STATE_URL" in text and "leave them\n# unprotected" in text


def run_step(step: dict[str, Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=180)


def clone(origin: Path, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(into)], check=True, capture_output=True, timeout=60)
    return into


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A repository with a one-dataset spec (an apply takes a second and needs no Ray), cloned beside it."""
    repo = tmp_path / "origin"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "raw.csv").write_text("a,b\n1,2\n")
    # the artifact store both runners reach (an s3:// bucket on hosted runners): a folder beside the checkouts
    (repo / "mlops.yaml").write_text(TINY_SPEC + "storage: {artifacts: ../artifacts}\n")
    (repo / ".gitignore").write_text(".mlops/\nplan.txt\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, timeout=60)
    for args in (["add", "-A"], ["commit", "-q", "-m", "tiny"]):
        subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args], cwd=repo, check=True,
                       capture_output=True, timeout=60)
    return repo


def test_a_pull_request_on_a_fresh_runner_plans_against_what_main_applied_even_while_it_is_locked(
        origin: Path, tmp_path: Path) -> None:
    """Two hosted runners share nothing but the state URL (here a SQLite file outside both checkouts; the same
    code path takes a postgresql:// URL): the main branch's Plan and Apply steps on one, a pull request's Plan
    step on a fresh clone. The pull request's plan is ``No changes``, made while another process holds the state's
    lock, which an apply could not get."""
    from runtime.state import lock

    workflow = load(GITHUB)
    shared = tmp_path / "shared" / "state.db"
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    base_env = {**os.environ, **workflow["env"], "PATH": f"{BIN}:{os.environ['PATH']}", "RUNNER_TEMP": str(runner_temp)}
    secrets = {"MLOPS_STATE_URL": str(shared), "PGPASSWORD": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}

    main = clone(origin, tmp_path / "runner-1")
    for name in ("Plan", "Apply"):
        result = run_step(step_named(workflow["jobs"]["apply"], name), main, {**base_env, **secrets})
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    assert shared.is_file() and not (main / ".mlops" / "state.db").exists()

    pull = clone(origin, tmp_path / "runner-2")
    plan_step = step_named(workflow["jobs"]["check"], "Plan")

    def plan(env: dict[str, str]) -> str:
        output = tmp_path / "github-output"
        output.write_text("")
        result = run_step(plan_step, pull, {**env, "GITHUB_OUTPUT": str(output)})
        assert result.returncode == 0, result.stdout + result.stderr
        return output.read_text().strip()

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom runtime.state import lock\n"
                               "held = lock.acquire(sys.argv[1], 'apply', 'other-runner@ci')\n"
                               "print('held', flush=True)\ntime.sleep(120)", str(shared)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.LockHeld, match="other-runner@ci"):
            lock.acquire(shared, "apply", "me@ci").release()
        assert plan({**base_env, **secrets}) == "exitcode=0"  # what main applied: nothing to do
        assert "No changes" in (pull / "plan.txt").read_text()
    finally:
        holder.kill()
        holder.wait()
    # without the secret (a pull request from a fork) the fresh runner's own empty state: everything to create
    assert plan({**base_env, "MLOPS_STATE_URL": ""}) == "exitcode=2"
    assert "1 to create" in (pull / "plan.txt").read_text()


def test_mlops_state_url_takes_the_place_of_storage_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compiler import load_project
    from runtime.workspace import STATE_URL_ENV, Workspace

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("a\n1\n")
    (tmp_path / "mlops.yaml").write_text(TINY_SPEC + "storage: {state: local/state.db}\n")
    project = load_project(tmp_path / "mlops.yaml")
    monkeypatch.delenv(STATE_URL_ENV, raising=False)
    assert Workspace.of(project).state_path == tmp_path / "local" / "state.db"
    monkeypatch.setenv(STATE_URL_ENV, "")  # an unset secret: the spec's
    assert Workspace.of(project).state_path == tmp_path / "local" / "state.db"
    monkeypatch.setenv(STATE_URL_ENV, str(tmp_path / "shared.db"))
    assert Workspace.of(project).state_path == tmp_path / "shared.db"
    monkeypatch.setenv(STATE_URL_ENV, "elsewhere/state.db")  # relative to the spec, as storage.state
    assert Workspace.of(project).state_path == tmp_path / "elsewhere" / "state.db"
