"""The package's shape: no import circle between packages, no module reading another's private
names, methods found through the registry."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hub_merge
from hub_merge.card import step_recipe
from hub_merge.card.constants import method_words
from hub_merge.card.steps import published
from hub_merge.lineage import FamilyTree, LineageNode
from hub_merge.merge import MergeSession, merge_to_folder
from hub_merge.merge.recipe import MergeRecipe, ModelEntry
from hub_merge.merge.registry import (
    MERGEKIT,
    CardWords,
    MergeMethod,
    method_for,
    register_method,
    registered_methods,
    unregister_method,
)

PACKAGE = Path(hub_merge.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, imported name) for every hub_merge import in ``path``, lazy or not."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("hub_merge"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hub_merge"):
                    yield alias.name, node.lineno, ""


def unit(module: str) -> str:
    """A module's package: ``merge`` for ``hub_merge.merge.run``, ``errors`` for a top module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hub_merge"


def package_graph() -> dict[str, dict[str, list[str]]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in files.items():
        for target, line, _ in imports(path, set(files)):
            a, b = unit(module), unit(target)
            if a != b:
                graph.setdefault(a, {}).setdefault(b, []).append(f"{module}:{line}")
    return graph


def circles(graph: dict[str, dict[str, list[str]]]) -> list[set[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(group)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_walk_finds_a_circle_when_there_is_one():
    assert circles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b": []}, "b": {"c": []}}) == []
    graph = package_graph()
    assert "merge" in graph["search"] and "tensors" in graph["merge"]  # it sees real imports


def test_no_import_circle_between_packages():
    graph = package_graph()
    found = circles(graph)
    detail = [
        f"{a} -> {b}: {graph[a][b][:3]}"
        for c in found
        for a in c
        for b in c
        if b in graph.get(a, {})
    ]
    assert not found, f"import circles between packages: {found}\n" + "\n".join(detail)


def private_imports(root: Path) -> list[str]:
    """``from x import _name`` lines in ``root``'s Python files (dunders and private submodules of
    the importer's own package, like ``cli/_hubopts.py``, are fine)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if (
                    node.level == 1
                    and node.module is None
                    and (path.parent / f"{name}.py").exists()
                ):
                    continue  # `from . import _module`: a private module of this package
                where = path.relative_to(root.parent)
                found.append(
                    f"{where}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {name}"
                )
    return found


def test_the_private_import_walk_finds_one(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def _helper():\n    pass\n")
    (tmp_path / "pkg" / "b.py").write_text("from .a import _helper\nfrom . import __doc__\n")
    assert private_imports(tmp_path / "pkg") == ["pkg/b.py:1: from .a import _helper"]


@pytest.mark.parametrize("root", ["hub_merge", "spaces", "benchmarks"])
def test_no_module_imports_another_modules_private_names(root):
    folder = PACKAGE.parent / root
    assert folder.is_dir(), f"{folder} is missing"
    found = private_imports(folder)
    assert not found, "give these names a public home:\n" + "\n".join(found)


def test_merge_never_imports_dam_and_only_their_own_modules_name_the_methods():
    graph = package_graph()
    assert "dam" not in graph.get("merge", {}), graph["merge"].get("dam")
    allowed = {
        '"dam"': {"dam/recipe.py", "dam/method.py", "search/strategies/dam.py"},
        '"lora_factor_sum"': {"merge/factor_method.py"},
    }
    for literal, files in allowed.items():
        naming = {
            str(p.relative_to(PACKAGE))
            for p in PACKAGE.rglob("*.py")
            if re.search(re.escape(literal), p.read_text())
        }
        assert naming <= files, f"{literal} named outside its own modules: {naming - files}"


def test_hub_merges_own_methods_are_registered_and_others_are_mergekits():
    own = registered_methods()
    assert {"dam", "lora_factor_sum"} <= set(own)
    assert method_for("ties") is MERGEKIT and method_for("slerp") is MERGEKIT
    for entry in own.values():
        assert entry.tool == "hub-merge" and entry.words is not None
        assert not entry.writes_state  # an adapter; a model with its coefficient file
    title, plain, paper = method_words("dam")
    assert title == "DAM" and paper == "https://arxiv.org/abs/2410.08371"
    assert method_words("ties")[0] == "TIES"
    assert method_words("no_such")[1] == "a mergekit merge method"


def test_dam_is_registered_whatever_is_imported_first():
    """A fresh interpreter that only imports the merge registry (or the engine) meets ``dam``
    recipes registered: ``hub_merge/__init__`` imports DAM's entry, merge/ never does."""
    code = (
        "import sys; from hub_merge.merge.registry import method_for; "
        "assert type(method_for('dam')).__name__ == 'DamMethod', method_for('dam'); "
        "assert type(method_for('lora_factor_sum')).__name__ == 'FactorMethod'; "
        "assert 'torch' not in sys.modules, 'reading the registry loads torch'"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def scaled_base():
    """A toy learned method, registered for one test: the base's weights times ``factor``."""

    @register_method
    class ScaledBase(MergeMethod):
        name = "test_scaled_base"
        tool = "hub-merge"
        own_inputs = True
        writes_state = False
        words = CardWords("scaled base", "multiplies the base by a number")

        def state_dict(self, recipe, inputs):
            f = float(recipe.parameters["factor"])
            return {n: t * f for n, t in inputs.session.base.state.items()}

        def write(self, recipe, out, **kwargs):
            out = Path(out)
            out.mkdir(parents=True)
            (out / "factor.txt").write_text(str(recipe.parameters["factor"]))
            return out

        def published_files(self, parameters):
            return {"/secret/run/factor.txt": "factor.txt"}

    yield ScaledBase
    unregister_method(ScaledBase.name)
    assert method_for(ScaledBase.name) is MERGEKIT


def test_a_new_method_is_one_registered_class(scaled_base, tiny_models, tmp_path):
    recipe = MergeRecipe(
        method="test_scaled_base",
        base=str(tiny_models.base),
        models=[ModelEntry(model=str(tiny_models.experts[0]))],
        parameters={"factor": 2.0},
    )
    session = MergeSession(tiny_models.base, device="cpu")
    merged = session.merge_recipe(recipe)
    name = next(n for n, t in session.base.state.items() if t.is_floating_point())
    assert torch.equal(merged[name], session.base.state[name] * 2.0)
    written = merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert (written / "factor.txt").read_text() == "2.0"

    tree = FamilyTree(base="b")
    tree.add(LineageNode(id="b", kind="base", name="b", path=str(tiny_models.base)))
    tree.add(LineageNode(id="e", kind="expert", name="e", path=str(tiny_models.experts[0])))
    step = {"method": "test_scaled_base", "base": "b", "models": [{"model": "e"}]}
    step["parameters"] = {"factor": 2.0}
    tree.add(
        LineageNode(
            id="m", kind="merge", name="m", parents=["e"], method=step["method"], recipe=step
        )
    )
    exported = step_recipe(tree, "m")
    # a hub-merge method names its inputs themselves (a LoRA adapter alone, not base+adapter)
    assert exported.models[0].model == str(tiny_models.experts[0])
    assert exported.base == str(tiny_models.base)
    assert published("at /secret/run/factor.txt", tree) == "at factor.txt"


def test_the_cards_merge_command_runs_a_hub_merge_method_step(tiny_models, tmp_path, capsys):
    """A card tells users to rerun a hub-merge method's step with ``hub-merge merge step.yml``;
    the command's checks ask the registry, so the step is not refused as an unknown method."""
    from hub_merge.cli import main
    from hub_merge.tensors import LoraAdapterReader

    step = tmp_path / "step.yml"
    a, b = tiny_models.adapters
    step.write_text(
        f"method: lora_factor_sum\nbase: {tiny_models.base}\nmodels:\n"
        f"  - {{model: {a}, parameters: {{weight: 0.25}}}}\n"
        f"  - {{model: {b}, parameters: {{weight: 0.75}}}}\n"
    )
    assert main(["merge", str(step), "--out", str(tmp_path / "out")]) == 0
    out = LoraAdapterReader(tmp_path / "out")
    name = out.plain_names()[0]
    mixed = out.lowrank(name)
    one, two = LoraAdapterReader(a).lowrank(name), LoraAdapterReader(b).lowrank(name)
    torch.testing.assert_close(mixed.A, 0.25 * one.A + 0.75 * two.A)
    torch.testing.assert_close(mixed.B, 0.25 * one.B + 0.75 * two.B)

    bad = tmp_path / "bad.yml"
    bad.write_text(step.read_text().replace("weight: 0.25", "density: 0.5"))
    assert main(["merge", str(bad), "--out", str(tmp_path / "bad")]) != 0
    assert "needs exactly a numeric `weight`" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
