"""The DVC benchmark's generators describe one DAG twice: ``dvc.yaml`` and ``mlops.yaml`` agree (no DVC needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from compiler import build_graph, load_project
from runtime.context import RunContext


def _load_bench() -> Any:
    """``bench/dvc_bench.py`` by path: ``bench`` is a folder beside the package, not on the test path."""
    spec = importlib.util.spec_from_file_location("dvc_bench", Path(__file__).resolve().parents[1] / "bench"
                                                  / "dvc_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dvc_bench: Any = _load_bench()


def dvc_edges(spec: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Stage names and (producer, consumer) edges of a ``dvc.yaml``, sources as ``src*`` by file stem."""
    stages = yaml.safe_load(spec.read_text())["stages"]
    producer = {out: name for name, stage in stages.items() for out in stage["outs"]}
    edges = set()
    for name, stage in stages.items():
        assert stage["outs"] == [f"out/{name}.txt"]
        assert stage["cmd"].split()[1:4] == ["stage.py", name, f"out/{name}.txt"]
        assert stage["cmd"].split()[4:] == stage["deps"][1:]
        for dep in stage["deps"]:
            if dep == "stage.py":
                continue
            assert (spec.parent / dep).is_file() or dep in producer, dep
            edges.add((producer.get(dep, Path(dep).stem), name))
    return set(stages), edges


def mlops_edges(spec: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Derived dataset names and dataset-to-dataset edges of the compiled graph."""
    graph = build_graph(load_project(spec))

    def name(node_id: str) -> str:
        return graph.node(node_id).address.removeprefix("datasets.")

    stages = {name(n.id) for n in graph.nodes() if n.kind == "transform"}
    return stages, {(name(u), name(v)) for u, v in graph.dag.edges}


def test_dvc_and_mlops_pipelines_are_the_same_dag(tmp_path: Path) -> None:
    graph = dvc_bench.dag(10)
    dvc_names, dvc = dvc_edges(dvc_bench.write_dvc(tmp_path / "dvc", graph))
    spec = dvc_bench.write_mlops(tmp_path / "mlops", graph)
    subprocess.run(["git", "init", "-q", str(spec.parent)], check=True)
    ours_names, ours = mlops_edges(spec)
    assert dvc_names == ours_names == {f"s{i}" for i in range(10)}
    assert dvc == ours == {(up, stage) for stage, ups in graph.items() for up in ups}
    assert {u for u, _ in dvc if u.startswith("src")} == {f"src{k}" for k in range(dvc_bench.SOURCES)}


def test_dag_mixes_chains_and_fan_in_and_the_change_reruns_a_part() -> None:
    graph = dvc_bench.dag(100)
    parents = [len([u for u in ups if not u.startswith("src")]) for ups in graph.values()]
    assert parents.count(1) > 20 and parents.count(2) > 20
    assert all(int(u[1:]) >= int(s[1:]) - 20 for s, ups in graph.items() for u in ups if not u.startswith("src"))
    rerun = dvc_bench.downstream(graph, dvc_bench.source_names(graph)[-1])
    assert "s75" in rerun and 0 < len(rerun) < 25 and all(int(s[1:]) >= 75 for s in rerun)


def test_stage_script_and_transform_write_the_same_digest(tmp_path: Path) -> None:
    """The two sides do the same work: the DVC stage's output equals what the transform would write."""
    graph = {"s0": ["src0"], "s1": ["s0", "src1"]}
    dvc_bench.write_dvc(tmp_path, graph)
    for name, ups in graph.items():
        subprocess.run([sys.executable, "stage.py", name, f"out/{name}.txt",
                        *[f"data/{u}.txt" if u.startswith("src") else f"out/{u}.txt" for u in ups]],
                       cwd=tmp_path, check=True)
    namespace: dict[str, object] = {}
    exec(dvc_bench.TRANSFORM, namespace)  # noqa: S102 - the generated pipeline module, run as the worker would

    (tmp_path / "t1").mkdir()
    (tmp_path / "t0").mkdir()
    (tmp_path / "t0" / "out.txt").write_text((tmp_path / "out" / "s0.txt").read_text())
    step = namespace["step"]
    assert callable(step)
    step(RunContext(inputs={"s0": tmp_path / "t0", "src1": tmp_path / "data" / "src1.txt"},
                    output_dir=tmp_path / "t1", params={"name": "s1"}))
    assert (tmp_path / "t1" / "out.txt").read_text() == (tmp_path / "out" / "s1.txt").read_text()
