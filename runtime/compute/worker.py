"""What runs inside a Ray task: import the user's callable, give it a RunContext, store what it made.

Everything here executes in a Ray worker process. :func:`execute` returns a plain dict (never raises for
a failure of the user's code) so the driver can record the log and decide about retries; the task's
entry point (:mod:`runtime.compute.entry`) turns it into a :class:`~runtime.compute.task.TaskResult`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.compute.containment import contained
from runtime.compute.shipping import code_root
from runtime.compute.task import TaskSpec
from runtime.context import RunContext, TrainResult
from runtime.endpoint.signature import of_training
from runtime.errors import TaskError

_HOST = socket.gethostname()
_LOADED_CODE: dict[str, str] = {}
"""module name -> code hash it was imported at (a worker process is reused across applies)."""


def import_callable(target: str, code_hash: str | None, repo_root: str, *, planned: bool = False) -> Any:
    """The callable ``module:function`` of the repository at ``repo_root`` (empty: the shipped code in the
    working directory), its module reloaded when its code (``code_hash``) changed since this process last
    imported it. ``planned``: ``code_hash`` is the plan's, and the module's file must hash to it (the code
    a task runs is the code planned)."""
    module_name, _, function = target.partition(":")
    root = code_root(repo_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = sys.modules.get(module_name)
    if module is None:
        module = importlib.import_module(module_name)
    elif _LOADED_CODE.get(module_name) != code_hash:
        module = importlib.reload(module)
    if planned and code_hash and _LOADED_CODE.get(module_name) != code_hash:
        _check_code(module, code_hash)
    _LOADED_CODE[module_name] = code_hash or ""
    return getattr(module, function)


def _check_code(module: Any, code_hash: str) -> None:
    """Refuse a module whose file is not the one planned (a node with other code on its path)."""
    from compiler.content_hash import hash_file

    path = Path(str(module.__file__))
    found = hash_file(path)
    if found != code_hash:
        raise TaskError(f"{module.__name__} ({path}) hashes to {found[:19]}, not to the planned {code_hash[:19]}: "
                        "this node runs other code than the plan was made for")


@functools.lru_cache(maxsize=8)
def _store(root: str) -> Any:
    """The artifact store at ``root`` (one per root in a worker process, which runs many tasks)."""
    from runtime.artifacts.store import ArtifactStore

    return ArtifactStore(root)


def _device(gpus: float) -> str:
    if gpus <= 0:
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _input_path(store: Any, name: str, uri: str, scratch: Callable[[], Path]) -> Path:
    """A readable path for an input artifact: the store's own copy when local (checked against its hash), else
    a fresh download (checked as it is copied)."""
    from runtime.artifacts.store import parse_uri

    local = store.verified_path(uri)
    if local is not None:
        return Path(local)
    is_dir, _ = parse_uri(uri)
    target = scratch() / "inputs" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(store.materialize_dir(uri, target) if is_dir else store.get_file(uri, target))


def load_predictor_of(trainer: str, code_hash: str | None, repo_root: str) -> Any:
    """The ``load_predictor`` beside a model's trainer (``module:train`` -> ``module:load_predictor``)."""
    return import_callable(trainer.split(":")[0] + ":load_predictor", code_hash, repo_root)


def in_store(store: Any, inputs: dict[str, Path]) -> list[Path]:
    """The inputs a task reads in place from the local artifact store (not copies made for it)."""
    root = str(store.root) + os.sep
    return [path for path in inputs.values() if str(path).startswith(root)]


class ContainmentError(Exception):
    """The user's code changed something outside ``ctx.output_dir`` that mlops can see."""


def execute(spec: TaskSpec, rank: int = 0, world_size: int = 1, device: str | None = None) -> dict[str, Any]:
    """Run the user's callable once in this process and store what it made (rank 0 only when distributed).

    With ``world_size > 1`` the log is returned as text (``log``) rather than stored.
    """
    store = _store(spec.artifact_root)
    started = time.time()
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    result: dict[str, Any] = {"host": _HOST, "pid": os.getpid(),
                              "device": device or _device(spec.gpus), "started_at": started}
    with contextlib.ExitStack() as cleanup:
        made: list[Path] = []

        def scratch() -> Path:  # for copies (a model, inputs on remote storage): made only when needed
            if not made:
                made.append(Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="mlops-run-"))))
            return made[0]

        output_dir = store.scratch_dir()  # on the store's filesystem: it becomes the artifact, nothing is copied
        if output_dir is None:
            output_dir = scratch() / "output"
            output_dir.mkdir()
        else:
            cleanup.callback(_remove_scratch, output_dir)
        model_path = store.get_file(spec.model_uri, scratch() / "model.pt") if spec.model_uri else None
        inputs = {name: _input_path(store, name, uri, scratch) for name, uri in spec.inputs.items()}
        ctx = RunContext(inputs=inputs, output_dir=output_dir,
                         params=dict(spec.params), seed=spec.seed, device=result["device"], model_path=model_path,
                         logger=logging.getLogger(f"mlops.run.{spec.node_id}"), world_size=world_size, rank=rank)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ctx.seed_everything()
                with contained(code_root(spec.repo_root), in_store(store, inputs)) as watch:
                    function = import_callable(spec.target, spec.code_hash, spec.repo_root, planned=True)
                    returned = function(ctx)
                if watch.killed:
                    log.write(f"mlops: killed {len(watch.killed)} process(es) the task left running: "
                              f"{', '.join(map(str, watch.killed))}\n")
                if watch.repository_writes:
                    shown = ", ".join(watch.repository_writes[:5]) + (" ..." if len(watch.repository_writes) > 5
                                                                       else "")
                    raise ContainmentError(f"wrote into the repository: {shown} (a task writes only into "
                                           "ctx.output_dir)")
                if watch.mlops_writes:
                    shown = ", ".join(watch.mlops_writes[:5]) + (" ..." if len(watch.mlops_writes) > 5 else "")
                    raise ContainmentError(f"touched mlops' own files: {shown} (a task writes only into "
                                           "ctx.output_dir)")
                if rank == 0:
                    result.update(_store_outputs(spec, ctx, returned, store))
            result["status"] = "succeeded"
        except Exception as exc:  # noqa: BLE001 - the user's code failed: report it, the driver retries
            log.write(traceback.format_exc())
            result["status"] = "failed"
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            root_logger.removeHandler(handler)
        result["steps"] = [(name, step, value) for name, series in ctx.metrics.items() for step, value in series]
        if world_size == 1:
            result["log_uri"] = store.put_bytes(log.getvalue().encode())
        else:  # the ranks' logs are stored together by runtime.compute.distributed
            result["log"] = log.getvalue()
        result["finished_at"] = time.time()
    return result


def _remove_scratch(path: Path) -> None:
    """Remove a run's output directory unless it became an artifact (and so moved away)."""
    from runtime.artifacts.store import remove_tree

    if os.path.lexists(path):
        remove_tree(path)


def _store_outputs(spec: TaskSpec, ctx: RunContext, returned: Any, store: Any) -> dict[str, Any]:
    from runtime.artifacts.store import scan_tree

    last = {name: series[-1][1] for name, series in ctx.metrics.items() if series}
    if spec.kind == "transform":
        scan = scan_tree(ctx.output_dir)
        if not scan.files:
            raise TaskError(f"transform {spec.target} wrote nothing into ctx.output_dir")
        return {"artifact": store.adopt_dir(ctx.output_dir, scan), "metrics": last}
    if spec.kind == "trial":
        declared = None
        if isinstance(returned, TrainResult):
            model, metrics, declared = returned.model, dict(returned.metrics), returned.signature
        elif isinstance(returned, tuple) and len(returned) == 2:
            model, metrics = returned
        else:
            raise TypeError(f"{spec.target} must return TrainResult(model=..., metrics={{...}}), "
                            f"got {type(returned).__name__}")
        if isinstance(model, str | os.PathLike):
            uri = store.put_file(_model_file(spec, ctx, model))
        else:
            _check_state_dict(spec, model)
            uri = store.save_model(model)
        signature = of_training(declared, ctx.inputs.get("train"), spec.train_schema or None)
        return {"artifact": uri, "metrics": {**last, **{k: float(v) for k, v in metrics.items()}},
                "signature": signature.as_record() if signature is not None else None}
    if spec.kind == "evaluate":
        if not isinstance(returned, dict):
            raise TypeError(f"{spec.target} must return a dict of metrics, got {type(returned).__name__}")
        return {"metrics": {**last, **{k: float(v) for k, v in returned.items()}}}
    raise ValueError(f"unknown task kind {spec.kind}")


def _check_state_dict(spec: TaskSpec, model: Any) -> None:
    """Refuse, in one line, a returned model that is not a state dict (a ``torch.nn.Module`` above all)."""
    from runtime.artifacts.store import state_dict_problem

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        raise TypeError(f"{spec.target} returned a torch.nn.Module ({type(model).__name__}) as its model; "
                        "return its weights: TrainResult(model=model.state_dict(), ...)")
    problem = state_dict_problem(model)
    if problem is not None:
        raise TypeError(f"{spec.target} returned a model that cannot be stored: {problem}")


def _model_file(spec: TaskSpec, ctx: RunContext, model: str | os.PathLike[str]) -> Path:
    """The file a trainer returned as its model: it must be inside ``ctx.output_dir`` once links are resolved.

    A relative path is taken relative to ``ctx.output_dir``.
    """
    root = Path(ctx.output_dir).resolve()
    resolved = (root / Path(model)).resolve()  # an absolute path stays itself
    if not resolved.is_relative_to(root):
        raise ValueError(f"{spec.target} returned model path {os.fspath(model)!r}, which is outside ctx.output_dir; "
                         "write the model file into ctx.output_dir")
    if not resolved.is_file():
        state = "is not a file" if resolved.exists() else "does not exist"
        raise ValueError(f"{spec.target} returned model path {os.fspath(model)!r}, which {state}; "
                         "return the path of the model file written into ctx.output_dir")
    return resolved
