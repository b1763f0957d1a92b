"""Approvals as signed git tags: a gate with ``approvals.signers`` counts only tags signed by an allowed key.

Real git repositories and real ed25519 keys (``ssh-keygen -t ed25519 -N ''``) made in ``tmp_path``; tags are
signed by git itself (``gpg.format ssh``, ``user.signingkey``). The end-to-end test runs ``mlops apply`` as a
subprocess (one embedded Ray, for the training run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import PIPELINE_SOURCE, with_version_one

from compiler import build_graph, load_project
from compiler.errors import ResolveError
from compiler.resolve import Project
from runtime.apply.operations import opened
from runtime.apply.signed_approvals import signed_approvers, verified_approvals
from runtime.plan.project import gate_views
from runtime.state import audit
from runtime.state.records import Approval, NodeResult

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))
ALICE = "alice@example.com"
SPEC = {
    "apiVersion": "mlops/v1", "project": "signed",
    "datasets": {"raw": {"path": "data/raw.csv"}},
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "raw"}}},
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                          "approvals": {"required": 1, "from": [ALICE, "bob@example.com"],
                                        "signers": ".mlops-signers"}}},
}


def git(repo: Path, *args: str, key: Path | None = None) -> str:
    """Run git in ``repo`` (signing with ``key`` when given); its stdout."""
    signing = ["-c", f"user.signingkey={key}", "-c", "gpg.format=ssh"] if key is not None else []
    done = subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *signing, *args], cwd=repo,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def keygen(directory: Path, name: str) -> Path:
    """A fresh ed25519 key without a passphrase; the private key's path (``.pub`` beside it)."""
    key = directory / "keys" / name
    key.parent.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True,
                   capture_output=True, timeout=30)
    return key


def allowed(principal: str, key: Path) -> str:
    """One allowed_signers line: the principal, then the public key."""
    return f"{principal} {key.with_suffix('.pub').read_text().strip()}\n"


def sign(repo: Path, key: Path | None, name: str, message: str) -> str:
    """Tag HEAD as ``name`` (signed with ``key``; annotated but unsigned when ``None``); the tag object's id."""
    git(repo, "tag", *(["-s"] if key is not None else ["-a"]), name, "-m", message, key=key)
    return git(repo, "rev-parse", f"refs/tags/{name}")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {who: keygen(tmp_path, who) for who in ("alice", "mallory")}


@pytest.fixture
def repo(tmp_path: Path, keys: dict[str, Path]) -> Path:
    """A git repository with one commit whose allowed_signers file gives alice's key to alice@example.com."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".mlops-signers").write_text(allowed(ALICE, keys["alice"]))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    git(root, "config", "gpg.format", "ssh")
    git(root, "config", "user.signingkey", str(keys["alice"]))
    return root


def verified(repo: Path, gate: str = "quality", version: int = 3) -> list[tuple[str, str, str]]:
    return [(a.principal, a.tag, a.object_id)
            for a in verified_approvals(repo, gate, version, repo / ".mlops-signers")]


# --- verification ------------------------------------------------------------------------------


def test_a_tag_signed_by_an_allowed_signer_counts_with_the_key_principal(repo: Path, keys: dict[str, Path]) -> None:
    oid = sign(repo, keys["alice"], "approve/quality/v3/alice", "approve gates.quality version 3\n\nLooks good.")
    assert verified(repo) == [(ALICE, "approve/quality/v3/alice", oid)]
    assert oid != git(repo, "rev-parse", "HEAD")  # the tag object, not the commit it points at
    assert verified(repo, version=4) == [] and verified(repo, gate="other") == []


def test_unsigned_tags_do_not_count(repo: Path) -> None:
    sign(repo, None, "approve/quality/v3/annotated", "approve gates.quality version 3")
    git(repo, "tag", "approve/quality/v3/lightweight")
    assert verified(repo) == []


def test_a_signature_by_a_key_not_in_allowed_signers_does_not_count(repo: Path, keys: dict[str, Path]) -> None:
    sign(repo, keys["mallory"], "approve/quality/v3/alice", "approve gates.quality version 3")
    assert verified(repo) == []


@pytest.mark.parametrize(("name", "message"), [
    ("approve/quality/v3/a", "approve gates.other version 3"),  # another gate
    ("approve/quality/v3/b", "approve gates.quality version 4"),  # another version
    ("approve/quality/v3/c", "approve gates.quality version 30"),  # a longer number is another version
    ("approve/quality/v3/d", "approve gates.quality-x version 3"),  # a longer name is another gate
    ("approve/quality/v3/e", "LGTM"),  # says nothing
    ("approve/quality/v30/f", "approve gates.quality version 3"),  # named for another version
])
def test_a_signed_tag_that_does_not_approve_this_gate_and_version_does_not_count(
        repo: Path, keys: dict[str, Path], name: str, message: str) -> None:
    sign(repo, keys["alice"], name, message)
    assert verified(repo) == []


def test_an_allowed_signature_copied_onto_another_message_does_not_count(repo: Path, keys: dict[str, Path]) -> None:
    oid = sign(repo, keys["alice"], "approve/other/v1/alice", "approve gates.other version 1")
    raw = git(repo, "cat-file", "tag", oid) + "\n"
    forged = raw.replace("approve/other/v1/alice", "approve/quality/v3/alice").replace(
        "approve gates.other version 1", "approve gates.quality version 3")
    made = subprocess.run(["git", "mktag"], cwd=repo, input=forged, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    git(repo, "update-ref", "refs/tags/approve/quality/v3/alice", made.stdout.strip())
    assert verified(repo) == [] and len(verified(repo, gate="other", version=1)) == 1


def test_the_principal_is_the_key_s_not_the_one_the_tag_name_claims(repo: Path, keys: dict[str, Path]) -> None:
    oid = sign(repo, keys["alice"], "approve/quality/v3/bob@example.com", "approve gates.quality version 3")
    assert verified(repo) == [(ALICE, "approve/quality/v3/bob@example.com", oid)]


# --- the spec, `mlops approve` and what a gate counts ----------------------------------------------


@pytest.fixture
def project(repo: Path, make_project: Callable[..., Path]) -> Project:
    """The signed-gate project in ``repo`` (a real git work tree), version 1 of its model in the state."""
    spec = make_project(repo, SPEC, files={"data/raw.csv": "a\n1\n", ".gitignore": ".mlops/\n__pycache__/\n"},
                        git=False)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    return with_version_one(load_project(spec))


def test_a_missing_signers_file_is_a_positioned_error(tmp_path: Path, make_project: Callable[..., Path]) -> None:
    spec = make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    with pytest.raises(ResolveError) as info:
        load_project(spec)
    [problem] = info.value.diagnostics
    assert problem.message == "signers file '.mlops-signers' does not exist" and problem.address == "gates.quality"
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "signers:" in text)
    assert problem.position is not None and problem.position.line == line
    assert problem.render().startswith(f"{spec}:{line}:") and "\n" not in problem.render()


def test_mlops_approve_is_refused_in_one_line_saying_how_to_approve(project: Project) -> None:
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), "approve",
                           "quality", "--version", "1", "--by", ALICE], cwd=project.root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert ('gates.quality requires signed approvals: git tag -s approve/quality/v1/<you> '
            '-m "approve gates.quality version 1" && git push origin --tags') in line
    with opened(project) as (_, store):
        assert store.approvals("quality", "churn", 1) == [] and audit.log(store) == []


def test_a_gate_counts_verified_allowed_signers_only_and_records_them_with_the_tag(
        project: Project, keys: dict[str, Path]) -> None:
    repo = project.root
    (repo / ".mlops-signers").write_text(allowed(ALICE, keys["alice"]) + allowed("carol@example.com", keys["mallory"]))
    with opened(project) as (_, store):
        store.add_approval(Approval("quality", "churn", 1, "bob@example.com"), commit="claimed")
        assert signed_approvers(project, store, "quality", 1) == []  # a claimed name counts for nothing
        sign(repo, keys["mallory"], "approve/quality/v1/carol", "approve gates.quality version 1")
        assert signed_approvers(project, store, "quality", 1) == []  # carol signs, but the gate does not allow her
        oid = sign(repo, keys["alice"], "approve/quality/v1/alice", "approve gates.quality version 1")
        assert signed_approvers(project, store, "quality", 1) == [ALICE]  # what the plan counts: nothing written
        assert [a.approver for a in store.approvals("quality", "churn", 1)] == ["bob@example.com"]
        assert signed_approvers(project, store, "quality", 1, record=True) == [ALICE]  # what apply counts
        assert signed_approvers(project, store, "quality", 1, record=True) == [ALICE]  # recorded once
        records = [(r.actor, r.commit) for r in audit.log(store) if r.action == "approve"]
        assert records == [("bob@example.com", "claimed"), (ALICE, oid)]
        assert audit.verify(store) == []
        git(repo, "tag", "-d", "approve/quality/v1/alice")
        assert signed_approvers(project, store, "quality", 1, record=True) == []  # counts while the tag verifies


def test_a_claimed_approval_by_a_signer_stands_in_the_way_of_the_signer_s_tag(
        project: Project, keys: dict[str, Path]) -> None:
    with opened(project) as (_, store):
        store.add_approval(Approval("quality", "churn", 1, ALICE), commit="claimed")
        sign(project.root, keys["alice"], "approve/quality/v1/alice", "approve gates.quality version 1")
        assert signed_approvers(project, store, "quality", 1, record=True) == []
        assert [r.commit for r in audit.log(store) if r.action == "approve"] == ["claimed"]


def test_plan_and_status_count_a_verified_tag_before_apply_records_it(project: Project, keys: dict[str, Path]) -> None:
    graph = build_graph(project)
    final = next(n for n in graph.by_address("models.churn") if n.kind == "trial")
    with opened(project) as (_, store):
        store.record_result(NodeResult(final.id, final.address, final.kind, final.fingerprint, {},
                                       outputs={"version": 1}))
        store.add_approval(Approval("quality", "churn", 1, "bob@example.com"), commit="claimed")
        view = gate_views(project, graph, store)["gates.quality"]
        assert (view.approvals, view.required) == (0, 1)
        sign(project.root, keys["alice"], "approve/quality/v1/alice", "approve gates.quality version 1")
        assert gate_views(project, graph, store)["gates.quality"].approvals == 1
        assert [a.approver for a in store.approvals("quality", "churn", 1)] == ["bob@example.com"]


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture
def cli_project(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Path]:
    """A committed project whose gate takes signed approvals only; ``mlops down`` afterwards."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "mlops.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    (root / "pipeline.py").write_text(PIPELINE_SOURCE)
    (root / "data").mkdir()
    (root / "data" / "raw.csv").write_text("a\n1\n")
    (root / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    (root / ".mlops-signers").write_text(allowed(ALICE, keys["alice"]))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    yield root
    subprocess.run([MLOPS, "down"], cwd=root, capture_output=True, timeout=120)


def mlops(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLOPS_ACTOR": "ci@example.com", "PYTHONPATH": str(ROOT)}
    return subprocess.run([MLOPS, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_apply_passes_the_gate_on_a_signed_tag_and_audits_the_tag_not_a_claimed_name(
        cli_project: Path, keys: dict[str, Path]) -> None:
    first = mlops(cli_project, "apply")
    assert "awaiting approval: gates.quality (version 1)" in first.stdout + first.stderr, first.stdout + first.stderr
    project = load_project(cli_project / "mlops.yaml")
    with opened(project) as (_, store):  # a claimed approval by an allowed principal, straight into the store
        assert store.add_approval(Approval("quality", "churn", 1, "bob@example.com"), commit="claimed")
    status = mlops(cli_project, "status")
    assert "version 1 awaiting approval (0 of 1)" in status.stdout, status.stdout + status.stderr
    second = mlops(cli_project, "apply")
    assert "awaiting approval: gates.quality (0 of 1 approvals)" in second.stdout, second.stdout + second.stderr
    oid = sign(cli_project, keys["alice"], "approve/quality/v1/alice", "approve gates.quality version 1")
    plan = mlops(cli_project, "plan")
    assert "approved: gates.quality (1 of 1)" in plan.stdout, plan.stdout + plan.stderr
    third = mlops(cli_project, "apply")
    assert third.returncode == 0, third.stdout + third.stderr
    with opened(project) as (_, store):
        decision = store.latest_gate_decision("quality", "churn", 1)
        assert decision is not None and decision.status == "passed"
        version = store.get_model_version("churn", 1)
        assert version is not None and version.status == "approved"
        approves = [(r.actor, r.commit) for r in audit.log(store) if r.action == "approve"]
        assert approves == [("bob@example.com", "claimed"), (ALICE, oid)]
        assert audit.verify(store) == []


def test_the_reconciler_s_fetch_brings_an_approval_tag_pushed_after_its_commit_and_prunes_a_deleted_one(
        repo: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    from runtime.reconcile.source import sync_checkout

    checkout = tmp_path / "checkout"
    sync_checkout(str(repo), "main", checkout, timeout=60)
    assert verified(checkout) == []
    oid = sign(repo, keys["alice"], "approve/quality/v3/alice", "approve gates.quality version 3")
    sync_checkout(str(repo), "main", checkout, timeout=60)  # no new commit: only the tag is new
    assert verified(checkout) == [(ALICE, "approve/quality/v3/alice", oid)]
    git(repo, "tag", "-d", "approve/quality/v3/alice")
    sync_checkout(str(repo), "main", checkout, timeout=60)
    assert verified(checkout) == []
