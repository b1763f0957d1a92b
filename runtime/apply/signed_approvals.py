"""Approvals as signed git tags: a gate with ``approvals.signers`` counts only tags signed by an allowed key.

An approver tags the commit (``git tag -s approve/<gate>/v<N>/<name> -m "approve gates.<gate> version <N>"``)
with an SSH signing key (``gpg.format ssh``), the way Argo CD and Flux verify commit signatures. A tag counts
when ``ssh-keygen -Y verify`` accepts its signature (namespace ``git``) for a principal that the gate's
OpenSSH ``allowed_signers`` file gives its key, and its signed message names this gate and version. The
principal is the file's, never the tag name's. Unsigned (lightweight or annotated) tags, keys not in the file,
wildcard principals and messages about another gate or version count for nothing.

The allowed_signers file is read from the work tree of the applied commit, so who may sign is itself
reviewed in git (protect it like the spec: CODEOWNERS, branch protection).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compiler.resolve import Project
from compiler.spec import Gate
from runtime.apply.gates import may_approve
from runtime.errors import ApprovalError
from runtime.state.records import Approval
from runtime.state.store import StateStore

TIMEOUT_S = 10.0
"""Seconds one git or ssh-keygen call may take; a tag whose check runs over is not counted."""
NAMESPACE = "git"
"""The signature namespace git signs tags in."""
_SIGNATURE_STARTS = (b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP MESSAGE-----",
                     b"-----BEGIN SIGNED MESSAGE-----", b"-----BEGIN SSH SIGNATURE-----")


@dataclass(frozen=True)
class SignedApproval:
    """A tag whose SSH signature verified against the allowed signers file."""

    principal: str
    """The principal the allowed_signers file gives the signing key."""
    tag: str
    """The tag's short name: ``approve/<gate>/v<N>/<anything>``."""
    object_id: str
    """The tag object's id (what the ``approve`` audit record carries as its commit)."""


def tag_prefix(gate: str, version: int | str) -> str:
    """``approve/<gate>/v<version>/``: the names a gate's approval tags of one version start with."""
    return f"approve/{gate}/v{version}/"


def how_to_approve(gate: str, version: int | str) -> str:
    """The commands that approve ``version`` at a signed gate."""
    return (f'git tag -s {tag_prefix(gate, version)}<you> -m "approve gates.{gate} version {version}" '
            "&& git push origin --tags")


def verified_approvals(repo_root: Path, gate: str, version: int, signers_file: Path) -> list[SignedApproval]:
    """The tags ``approve/<gate>/v<version>/*`` of the repository at ``repo_root`` that verify, by tag name.

    Raises :class:`MlopsError` (one line) when the tags cannot be listed or git / ssh-keygen is missing;
    a tag whose own check fails or times out is left out.
    """
    prefix = f"refs/tags/{tag_prefix(gate, version)}"
    listed = _run(["git", "-C", str(repo_root), "for-each-ref", "--format=%(objecttype) %(objectname) %(refname)",
                   prefix], what=f"listing the approval tags of gates.{gate}")
    if listed is None or listed.returncode != 0:
        why = _last_line(listed.stderr) if listed is not None else f"no answer within {TIMEOUT_S:g}s"
        raise ApprovalError.one(f"gates.{gate}: cannot list approval tags in {repo_root}: {why}")
    found = []
    for line in listed.stdout.decode(errors="replace").splitlines():
        kind, object_id, ref = (line.split(" ", 2) + ["", ""])[:3]
        if kind != "tag" or not ref.startswith(prefix) or ref == prefix:
            continue  # a lightweight tag has no signature
        principal = _verify(repo_root, object_id, gate, version, signers_file)
        if principal is not None:
            found.append(SignedApproval(principal, ref.removeprefix("refs/tags/"), object_id))
    return sorted(found, key=lambda a: a.tag)


def signed_approvers(project: Project, store: StateStore, gate_name: str, version: int, *,
                     record: bool = False) -> list[str]:
    """The principals that count for ``version`` at a signed gate: verified tags by signers the gate allows.

    With ``record``, each verified approval is first recorded (:meth:`StateStore.add_approval`, idempotent)
    with the tag's object id as its audit record's commit. A principal counts only while its tag verifies and
    its approval row's ``approve`` record carries one of its verified tags: a claimed approval (``mlops
    approve``, a direct store call) counts for nothing, and stands in the way of that principal's tag.
    """
    gate = project.spec.gates[gate_name]
    assert gate.approvals is not None and gate.approvals.signers is not None  # is_signed(gate)
    signers = project.spec_path.parent / gate.approvals.signers
    if not signers.is_file():
        raise ApprovalError.one(f"gates.{gate_name}: signers file '{gate.approvals.signers}' does not exist")
    tags: dict[str, set[str]] = {}
    for approval in verified_approvals(project.root, gate_name, version, signers):
        if may_approve(gate, approval.principal):
            tags.setdefault(approval.principal, set()).add(approval.object_id)
            if record:
                store.add_approval(Approval(gate_name, gate.model, version, approval.principal),
                                   commit=approval.object_id)
    recorded = {a.approver: a.commit for a in store.approvals(gate_name, gate.model, version)}
    return sorted(p for p in tags if p not in recorded or recorded[p] in tags[p])


def is_signed(gate: Gate) -> bool:
    """Whether ``gate`` counts signed tags only (``approvals.signers``)."""
    return gate.approvals is not None and gate.approvals.signers is not None


def counted_approvers(project: Project, store: StateStore, gate_name: str, version: int, *,
                      record: bool = False) -> list[str]:
    """The principals whose approval of ``version`` counts at ``gate_name``: verified signed tags at a signed
    gate (:func:`signed_approvers`; ``record`` records them), else the approvals in the audit chain."""
    gate = project.spec.gates[gate_name]
    if is_signed(gate):
        return signed_approvers(project, store, gate_name, version, record=record)
    return sorted({a.approver for a in store.approvals(gate_name, gate.model, version)})


def _verify(repo_root: Path, object_id: str, gate: str, version: int, signers_file: Path) -> str | None:
    """The principal whose key signed the tag object, when it verifies and its message approves this version."""
    shown = _run(["git", "-C", str(repo_root), "cat-file", "tag", object_id], what="reading an approval tag")
    if shown is None or shown.returncode != 0:
        return None
    payload, signature = _split_signature(shown.stdout)
    if not signature.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return None
    message = payload.partition(b"\n\n")[2].decode(errors="replace")
    if not re.search(rf"(?<!\w)approve gates\.{re.escape(gate)} version {version}(?![\w-])", message):
        return None
    with tempfile.TemporaryDirectory(prefix="mlops-sig-") as scratch:
        signature_file = Path(scratch) / "tag.sig"
        signature_file.write_bytes(signature)
        found = _run(["ssh-keygen", "-Y", "find-principals", "-f", str(signers_file), "-s", str(signature_file)],
                     what="finding an approval tag's signer")
        if found is None or found.returncode != 0:
            return None  # the key is not in the file
        principals = [p for p in found.stdout.decode(errors="replace").split() if not set(p) & set("*?!")]
        if not principals:
            return None  # a pattern names no one
        principal = principals[0]  # the key's first principal: one key, one approval
        checked = _run(["ssh-keygen", "-Y", "verify", "-f", str(signers_file), "-I", principal, "-n", NAMESPACE,
                        "-s", str(signature_file)], what="verifying an approval tag", stdin=payload)
    return principal if checked is not None and checked.returncode == 0 else None


def _split_signature(raw: bytes) -> tuple[bytes, bytes]:
    """(signed payload, signature) of a tag object, split as git does: at the last signature start line."""
    starts = [at + 1 for at in (raw.rfind(b"\n" + marker) for marker in _SIGNATURE_STARTS) if at >= 0]
    start = max(starts, default=0 if raw.startswith(_SIGNATURE_STARTS) else -1)
    return (raw, b"") if start < 0 else (raw[:start], raw[start:])


def _run(command: list[str], *, what: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes] | None:
    """Run ``command`` with a timeout; ``None`` when it ran over. A missing program is a one-line error."""
    try:
        return subprocess.run(command, input=stdin if stdin is not None else b"", capture_output=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None
    except FileNotFoundError as error:
        raise ApprovalError.one(f"{what} needs {command[0]}, which is not installed: {error.strerror}") from None


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "git failed"
