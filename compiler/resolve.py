"""Check every reference in a :class:`Spec` and build the :class:`Project` the later passes use.

Resolution checks references between sections (with did-you-mean), dataset paths and gates'
``signers`` files (they must stay inside the repository), callables (their module must be a file of
the repository) and the dataset derivation graph (a cycle is reported with its path). It then
computes the policy views of SPEC §2: each resource with defaults applied, plus ``name``, ``address``
and ``refs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from compiler.errors import Diagnostic, Position, ResolveError
from compiler.load import Document, Loc
from compiler.repository import find_root, inside, module_file, top_level_names
from compiler.spec import SECTIONS, Spec
from compiler.suggest import did_you_mean


@dataclass
class Project:
    """A resolved spec: the typed spec, where it came from, and the policy views of its resources."""

    spec: Spec
    document: Document
    spec_path: Path
    root: Path
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    callables: dict[str, Path] = field(default_factory=dict)
    """``module:function`` -> the module's file in the repository."""
    upstream: dict[str, list[str]] = field(default_factory=dict)
    """dataset name -> every dataset it derives from (transitively), in a stable order."""

    def position(self, address: str, *fields: str | int, key: bool = False) -> Position:
        """Where a resource (or one of its fields) is written in ``mlops.yaml``."""
        return self.document.position_of((*loc_of(address), *fields), key=key)

    def addresses(self) -> list[str]:
        """Every resource address, in section order."""
        spec = self.spec
        return [f"{section}.{name}" for section in SECTIONS for name in getattr(spec, section)]

    def dataset_path(self, name: str) -> Path:
        """The absolute path of a source dataset."""
        path = self.spec.datasets[name].path
        assert path is not None, f"datasets.{name} is derived"
        return (self.spec_path.parent / path).resolve()


def loc_of(address: str) -> Loc:
    """``models.churn`` -> ``('models', 'churn')``; ``project`` -> ``()``."""
    if address == "project":
        return ()
    section, _, name = address.partition(".")
    return (section, name) if name else (section,)


def resolve(spec: Spec, document: Document, spec_path: Path) -> Project:
    """Check references, paths, callables and cycles; build the views. Raises :class:`ResolveError`."""
    project = Project(spec, document, spec_path.resolve(), find_root(spec_path))
    problems: list[Diagnostic] = []
    for check in (_check_references, _check_paths, _check_callables, _check_cycles, _check_feasibility,
                  _check_exposure):
        problems.extend(check(project))
    if problems:
        raise ResolveError(problems)
    project.upstream = _upstream_datasets(spec)
    project.views = build_views(project)
    return project


def _problem(project: Project, address: str, fields: Sequence[str | int], message: str) -> Diagnostic:
    return Diagnostic(message, project.position(address, *fields), address)


def _check_references(project: Project) -> list[Diagnostic]:
    spec = project.spec
    out: list[Diagnostic] = []

    def ref(address: str, fields: Sequence[str | int], section: str, name: str | None) -> None:
        if name is not None and name not in getattr(spec, section):
            singular = section[:-1]
            hint = did_you_mean(name, getattr(spec, section))
            out.append(_problem(project, address, fields, f"unknown {singular} '{name}'{hint}"))

    for name, dataset in spec.datasets.items():
        address = f"datasets.{name}"
        for i, upstream in enumerate(dataset.from_ or []):
            ref(address, ("from", i), "datasets", upstream)
        if isinstance(dataset.pii, list) and dataset.schema_ is not None:
            for i, column in enumerate(dataset.pii):
                if column not in dataset.schema_:
                    hint = did_you_mean(column, dataset.schema_)
                    out.append(_problem(project, address, ("pii", i), f"PII column '{column}' is not in schema{hint}"))
    for name, model in spec.models.items():
        for role, dataset_name in model.data.items():
            ref(f"models.{name}", ("data", role), "datasets", dataset_name)
    for name, gate in spec.gates.items():
        ref(f"gates.{name}", ("model",), "models", gate.model)
    for name, deployment in spec.deployments.items():
        address = f"deployments.{name}"
        ref(address, ("model",), "models", deployment.model)
        ref(address, ("input",), "datasets", deployment.input)
        for i, gate_name in enumerate(deployment.gates):
            ref(address, ("gates", i), "gates", gate_name)
            gated = spec.gates.get(gate_name)
            if gated is not None and gated.model in spec.models and gated.model != deployment.model:
                out.append(_problem(project, address, ("gates", i),
                                    f"gate '{gate_name}' checks model '{gated.model}', not '{deployment.model}'"))
    routes: dict[str, str] = {}
    for name, deployment in spec.deployments.items():
        if deployment.mode == "realtime":
            route = deployment.route or f"/{name}"
            if route in routes:
                out.append(_problem(project, f"deployments.{name}", ("route",),
                                    f"route {route} is already used by deployments.{routes[route]}"))
            routes[route] = name
    for name, monitor in spec.monitors.items():
        address = f"monitors.{name}"
        ref(address, ("deployment",), "deployments", monitor.deployment)
        ref(address, ("reference",), "datasets", monitor.reference)
        reference = spec.datasets.get(monitor.reference or "")
        columns = reference.schema_ if reference is not None else None
        for i, check in enumerate(monitor.checks):
            for j, column in enumerate(getattr(check, "columns", None) or []):
                if columns is not None and column not in columns:
                    hint = did_you_mean(column, columns)
                    out.append(_problem(project, address, ("checks", i, "columns", j),
                                        f"column '{column}' is not in datasets.{monitor.reference}'s schema{hint}"))
    return out


def _check_paths(project: Project) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for name, dataset in project.spec.datasets.items():
        if dataset.path is None:
            continue
        address = f"datasets.{name}"
        raw = dataset.path
        if PurePosixPath(raw).is_absolute() or Path(raw).is_absolute():
            message = f"path '{raw}' is absolute; use a path inside the repository"
            out.append(_problem(project, address, ("path",), message))
            continue
        target = project.spec_path.parent / raw
        if not inside(target, project.root):
            out.append(_problem(project, address, ("path",), f"path '{raw}' leaves the repository"))
        elif not target.exists():
            out.append(_problem(project, address, ("path",), f"path '{raw}' does not exist"))
        elif dataset.format == "dir" and not target.is_dir():
            out.append(_problem(project, address, ("path",), f"path '{raw}' is a file but format is 'dir'"))
    for name, gate in project.spec.gates.items():
        signers = gate.approvals.signers if gate.approvals is not None else None
        if signers is None:
            continue
        address, where = f"gates.{name}", ("approvals", "signers")
        target = project.spec_path.parent / signers
        if PurePosixPath(signers).is_absolute() or Path(signers).is_absolute():
            out.append(_problem(project, address, where,
                                f"signers file '{signers}' is absolute; use a path inside the repository"))
        elif not inside(target, project.root):
            out.append(_problem(project, address, where, f"signers file '{signers}' leaves the repository"))
        elif not target.is_file():
            out.append(_problem(project, address, where, f"signers file '{signers}' does not exist"
                                + (" (it is a directory)" if target.is_dir() else "")))
    return out


def _check_callables(project: Project) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    spec = project.spec
    refs: list[tuple[str, str, str]] = []
    for name, dataset in spec.datasets.items():
        if dataset.transform:
            refs.append((f"datasets.{name}", "transform", dataset.transform))
    for name, model in spec.models.items():
        refs.append((f"models.{name}", "train", model.train))
        if model.evaluate:
            refs.append((f"models.{name}", "evaluate", model.evaluate))
    names_by_file: dict[Path, set[str] | None] = {}
    for address, field_name, target in refs:
        module = target.partition(":")[0]
        if target in project.callables:
            continue
        path = module_file(module, project.root)
        if path is None:
            out.append(_problem(project, address, (field_name,),
                                f"module '{module}' is not a file of the repository ({project.root.name}/)"))
            continue
        function = target.partition(":")[2]
        names = names_by_file.setdefault(path, top_level_names(path))
        if names is not None and function not in names:
            out.append(_problem(project, address, (field_name,),
                                f"module '{module}' has no function '{function}'{did_you_mean(function, names)}"))
            continue
        project.callables[target] = path
    return out


def _check_cycles(project: Project) -> list[Diagnostic]:
    spec = project.spec
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []
    out: list[Diagnostic] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for upstream in spec.datasets[name].from_ or []:
            if upstream not in spec.datasets:
                continue
            if state.get(upstream) == 1:
                cycle = stack[stack.index(upstream):] + [upstream]
                path = " -> ".join(f"datasets.{n}" for n in cycle)
                out.append(_problem(project, f"datasets.{upstream}", ("from",), f"dependency cycle: {path}"))
            elif upstream not in state:
                visit(upstream)
        stack.pop()
        state[name] = 2

    for name in spec.datasets:
        if name not in state:
            visit(name)
    return out


def _check_feasibility(project: Project) -> list[Diagnostic]:
    """On a KubeRay cluster, GPU requests must fit some worker group (local clusters are checked at plan time)."""
    spec = project.spec
    if spec.cluster.provider != "kuberay":
        return []
    most = max((group.gpus for group in spec.cluster.workers.values()), default=0)
    out: list[Diagnostic] = []
    for section in ("datasets", "models", "deployments"):
        for name, resource in getattr(spec, section).items():
            gpus = resource.resources.gpus
            if gpus > most:
                out.append(_problem(project, f"{section}.{name}", ("resources", "gpus"),
                                    f"infeasible: asks for {gpus:g} GPU(s) but no worker group of the cluster has "
                                    f"more than {most}"))
    return out


def served_beyond_loopback(spec: Spec) -> str | None:
    """Why the spec's realtime deployments are reachable beyond this machine's loopback (``None``: they are not)."""
    from compiler.spec import LOOPBACK_HOSTS

    if spec.cluster.provider == "kuberay":
        return "the cluster is provider: kuberay"
    if spec.cluster.serve_host not in LOOPBACK_HOSTS:
        return f"cluster.serve_host is {spec.cluster.serve_host}"
    address = spec.cluster.address
    if address and address != "auto":
        host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK_HOSTS:
            return f"cluster.address is {address}"
    return None


def _check_exposure(project: Project) -> list[Diagnostic]:
    """A realtime deployment that answers beyond loopback must check a bearer token (``auth``)."""
    why = served_beyond_loopback(project.spec)
    if why is None:
        return []
    return [_problem(project, f"deployments.{name}", (), f"served beyond loopback ({why}) without `auth`: add "
                     "auth: {token_env: NAME} or auth: {token_file: PATH}, or serve on 127.0.0.1")
            for name, deployment in project.spec.deployments.items()
            if deployment.mode == "realtime" and deployment.auth is None]


def _upstream_datasets(spec: Spec) -> dict[str, list[str]]:
    memo: dict[str, list[str]] = {}

    def upstream(name: str) -> list[str]:
        if name not in memo:
            seen: dict[str, None] = {}
            for parent in spec.datasets[name].from_ or []:
                seen[parent] = None
                for grand in upstream(parent):
                    seen[grand] = None
            memo[name] = list(seen)
        return memo[name]

    for name in spec.datasets:
        upstream(name)
    return memo


GOVERNANCE = ("pii", "legal_basis", "region", "retention_days", "access")
"""The dataset fields that follow the data: a derived dataset inherits them unless it declares its own."""


def present(value: Any) -> Any:
    """A spec model as its view sees it: fields by their YAML names, defaults applied, unset fields absent.

    A field that is ``None`` (not set, or written as ``null``) is left out, at every level of the spec's own
    models; values inside ``params`` and other free-form mappings are the user's and are kept as written.
    """
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name, info in type(value).model_fields.items():
            item = getattr(value, name)
            if item is not None:
                out[info.alias or name] = present(item)
        return out
    if isinstance(value, dict):
        return {key: present(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [present(item) for item in value]
    return to_jsonable_python(value)


@dataclass(frozen=True)
class Governance:
    """A dataset's governance fields as its view carries them (``values``), what its upstream datasets pass down
    (``inherited``), which of the fields it sets itself (``declared``) and where it goes beyond what it inherits
    (``widens``: a longer ``retention_days``, ``access`` principals not allowed on every upstream)."""

    values: dict[str, Any]
    inherited: dict[str, Any]
    declared: list[str]
    widens: dict[str, Any]

    @property
    def personal(self) -> bool:
        return bool(self.values.get("pii"))


def governance(spec: Spec) -> dict[str, Governance]:
    """SPEC §2 "governance follows the data", per dataset name.

    A derived dataset inherits from the datasets of its ``from`` (as they are after their own inheritance):
    ``pii`` (personal when any upstream is), ``legal_basis`` and ``region`` (when every personal upstream
    has the same one), ``retention_days`` (the shortest upstream one) and ``access`` (the principals allowed
    on every upstream that restricts access; an upstream with no ``access`` list restricts nothing). Its own
    declaration wins; ``access: []`` declares nothing.
    """
    out: dict[str, Governance] = {}

    def of(name: str) -> Governance:
        if name in out:
            return out[name]
        dataset = spec.datasets[name]
        declared = [f for f in GOVERNANCE if f in dataset.model_fields_set and getattr(dataset, f) is not None
                    and not (f == "access" and not dataset.access)]
        own: dict[str, Any] = {f: present(getattr(dataset, f)) for f in declared}
        parents = [of(parent) for parent in dataset.from_ or [] if parent in spec.datasets]
        inherited: dict[str, Any] = {}
        if parents:
            personal = [p for p in parents if p.personal]
            inherited["pii"] = bool(personal)
            for key in ("legal_basis", "region"):
                agreed = {p.values.get(key) for p in personal}
                if len(agreed) == 1 and None not in agreed:
                    inherited[key] = agreed.pop()
            retention = [p.values["retention_days"] for p in parents if "retention_days" in p.values]
            if retention:
                inherited["retention_days"] = min(retention)
            restricting = [p.values["access"] for p in parents if p.values.get("access")]
            if restricting:
                inherited["access"] = [a for a in restricting[0] if all(a in r for r in restricting[1:])]
        values = {"pii": False, "access": [], **inherited, **own}
        widens: dict[str, Any] = {}
        if "retention_days" in own and "retention_days" in inherited \
                and own["retention_days"] > inherited["retention_days"]:
            widens["retention_days"] = own["retention_days"]
        if "access" in own and "access" in inherited:
            wider = [a for a in own["access"] if a not in inherited["access"]]
            if wider:
                widens["access"] = wider
        out[name] = Governance(values, inherited, declared, widens)
        return out[name]

    for name in spec.datasets:
        of(name)
    return out


def build_views(project: Project) -> dict[str, dict[str, Any]]:
    """The policy views of SPEC §2, keyed by address (plus ``project``, ``cluster``, ``storage``).

    A view is the resource with the spec's defaults applied and no unset field (never ``null``), plus
    ``name``, ``address`` and ``refs``. Defaults the spec computes are filled in (a dataset's ``format`` from
    its suffix, a realtime deployment's ``route``); a dataset's governance fields are what it declares, else
    what it inherits (see :func:`governance`).
    """
    spec = project.spec
    upstream = project.upstream
    dumped = {
        section: {name: present(resource) for name, resource in getattr(spec, section).items()}
        for section in SECTIONS
    }
    governed = governance(spec)
    for name, dataset in spec.datasets.items():
        body = dumped["datasets"][name]
        body.update(governed[name].values)
        chosen = dataset.resolved_format()
        if chosen is not None:
            body["format"] = chosen
    for name, deployment in spec.deployments.items():
        if deployment.mode == "realtime":
            dumped["deployments"][name]["route"] = deployment.route or f"/{name}"
    consumers: dict[str, list[str]] = {name: [] for name in spec.datasets}
    for name, dataset in spec.datasets.items():
        for parent in dataset.from_ or []:
            consumers[parent].append(f"datasets.{name}")
    for name, model in spec.models.items():
        for dataset_name in dict.fromkeys(model.data.values()):
            consumers[dataset_name].append(f"models.{name}")
    gates_of_model: dict[str, list[str]] = {name: [] for name in spec.models}
    for name, gate in spec.gates.items():
        gates_of_model[gate.model].append(f"gates.{name}")
    deployments_of_model: dict[str, list[str]] = {name: [] for name in spec.models}
    deployments_of_gate: dict[str, list[str]] = {name: [] for name in spec.gates}
    for name, deployment in spec.deployments.items():
        deployments_of_model[deployment.model].append(f"deployments.{name}")
        for gate_name in deployment.gates:
            deployments_of_gate[gate_name].append(f"deployments.{name}")
    monitors_of_deployment: dict[str, list[str]] = {name: [] for name in spec.deployments}
    for name, monitor in spec.monitors.items():
        monitors_of_deployment[monitor.deployment].append(f"monitors.{name}")

    def pii_of(dataset_name: str) -> bool:
        """Holds personal data, or derives from data that does (a claim of anonymisation does not end it)."""
        found = governed[dataset_name]
        return found.personal or bool(found.inherited.get("pii"))

    views: dict[str, dict[str, Any]] = {}

    risk = spec.compliance.risk

    def view(section: str, name: str, refs: dict[str, Any]) -> dict[str, Any]:
        out = dumped[section][name]
        out.update(name=name, address=f"{section}.{name}", refs={**refs, "risk": risk})
        views[f"{section}.{name}"] = out
        return out

    for name in spec.datasets:
        found = governed[name]
        view("datasets", name, {"consumers": consumers[name],
                                "upstream": [f"datasets.{u}" for u in upstream[name]],
                                "pii": pii_of(name), "inherited": found.inherited, "declared": found.declared,
                                "widens": found.widens})
    for name, model in spec.models.items():
        model_datasets: dict[str, None] = {}
        for dataset_name in model.data.values():
            model_datasets[dataset_name] = None
            for u in upstream[dataset_name]:
                model_datasets[u] = None
        view("models", name, {"datasets": [f"datasets.{d}" for d in model_datasets],
                              "pii": any(governed[d].personal for d in model_datasets),
                              "gates": gates_of_model[name], "deployments": deployments_of_model[name]})
    for name in spec.gates:
        view("gates", name, {"deployments": deployments_of_gate[name]})
    for name, deployment in spec.deployments.items():
        view("deployments", name, {"gates": [f"gates.{g}" for g in deployment.gates],
                                   "monitors": monitors_of_deployment[name],
                                   "model": views[f"models.{deployment.model}"]})
    for name, monitor in spec.monitors.items():
        view("monitors", name, {"deployment": views[f"deployments.{monitor.deployment}"]})
    for section in ("cluster", "storage"):
        body = present(getattr(spec, section))
        body.update(name=section, refs={})
        body.setdefault("address", section)  # the cluster's own `address` (its Ray address), when set, wins
        views[section] = body
    top = {key: present(getattr(spec, key)) for key in ("apiVersion", "project", "owners", "compliance")}
    top.update(name=spec.project, address="project",
               refs={"counts": {section: len(getattr(spec, section)) for section in SECTIONS}})
    views["project"] = top
    return views
