"""In-place candidates: same scores as the merge path, and the model restored bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from hub_merge.evaluate import Evaluator, load_tasks
from hub_merge.merge import MergeSession
from hub_merge.merge.adapter_mix import factor_recipe
from hub_merge.merge.inplace import InPlaceModel
from hub_merge.merge.inplace_kernels import KERNEL_METHODS
from hub_merge.merge.recipe import MergeRecipe, ModelEntry


@pytest.fixture(scope="module")
def setup(tiny_zoo):
    session = MergeSession(tiny_zoo.base, device="cpu")
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    names = ["add", "reverse", "uppercase"]
    ev = Evaluator(load_tasks([tiny_zoo.tasks[n] for n in names]), tok, limit=6)
    inplace = InPlaceModel(session, base_source=str(tiny_zoo.base))
    return tiny_zoo, session, ev, inplace, names


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise(before, model) -> None:
    after = model.state_dict()
    assert set(before) == set(after)
    for k, v in before.items():
        assert v.dtype == after[k].dtype
        assert torch.equal(
            v.view(torch.uint8) if v.is_floating_point() else v,
            after[k].view(torch.uint8) if v.is_floating_point() else after[k],
        ), k


def merge_path_scores(session, ev, recipe):
    state = session.merge_recipe(recipe)
    return ev.score(session.to_model(state))


def recipes(zoo, names):
    ad = [str(zoo.adapters[n]) for n in names]
    ex = [str(zoo.experts[n]) for n in names]
    base = str(zoo.base)
    return {
        "uniform adapters": MergeRecipe(
            method="linear", models=[ModelEntry(model=a, parameters={"weight": 1.0}) for a in ad]
        ),
        "uniform experts": MergeRecipe(
            method="linear", models=[ModelEntry(model=e, parameters={"weight": 1.0}) for e in ex]
        ),
        "task arithmetic adapters, layer gradient": MergeRecipe(
            method="task_arithmetic",
            base=base,
            models=[
                ModelEntry(model=ad[0], parameters={"weight": [0.2, 0.9]}),
                ModelEntry(model=ad[1], parameters={"weight": 0.5}),
            ],
            parameters={"lambda": 0.8},
        ),
        "swarm dense, experts": MergeRecipe(
            method="task_arithmetic",
            base=base,
            models=[
                ModelEntry(model=e, parameters={"weight": w})
                for e, w in zip(ex, [0.7, -0.2, 0.5], strict=True)
            ],
            parameters={"normalize": False},
        ),
        "mixed full + adapter, filters, normalized": MergeRecipe(
            method="task_arithmetic",
            base=base,
            models=[
                ModelEntry(model=ex[0], parameters={"weight": 0.6}),
                ModelEntry(
                    model=ad[2],
                    parameters={"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.3}]},
                ),
            ],
            parameters={"normalize": True},
        ),
        "factor mix": factor_recipe(base, ad, [0.5, 0.3, 0.2]),
        "one adapter": MergeRecipe(method="passthrough", models=[ModelEntry(model=ad[1])]),
        "one expert": MergeRecipe(method="passthrough", models=[ModelEntry(model=ex[1])]),
    }


def test_affine_candidates_score_as_the_merge_path_and_restore_exactly(setup):
    zoo, session, ev, inplace, names = setup
    model = inplace.model
    before = snapshot(model)
    for label, recipe in recipes(zoo, names).items():
        plan = inplace.plan(recipe)
        assert plan is not None, label
        with inplace.applied(plan) as m:
            assert m is model
            fast = ev.score(m)
        assert_bitwise(before, model)
        if recipe.method == "passthrough":
            h = session.load(recipe.models[0].model)
            slow = ev.score(
                session.to_model({n: h.tensor(n, session.device) for n in session.names})
            )
        else:
            slow = merge_path_scores(session, ev, recipe)
        session.to_model(session.base.state)  # the merge path reused the model: back to base
        assert_bitwise(before, model)
        for task in slow:
            assert fast[task] == pytest.approx(slow[task], abs=1e-5), (label, task)


def test_lora_candidate_touches_only_adapted_modules(setup):
    zoo, session, ev, inplace, names = setup
    plan = inplace.plan(recipes(zoo, names)["uniform adapters"])
    before = snapshot(inplace.model)
    adapted: set[str] = set()
    for n in names:
        adapted |= set(session.load(str(zoo.adapters[n])).source.adapter.names)
    with inplace.applied(plan) as m:
        live = m.state_dict()
        changed = {k for k, v in before.items() if not torch.equal(v, live[k])}
    assert changed and changed <= adapted
    assert inplace.touched_last <= len(adapted)
    assert_bitwise(before, inplace.model)


def test_restored_exactly_after_an_error_mid_scoring(setup):
    zoo, session, ev, inplace, names = setup
    before = snapshot(inplace.model)
    plan = inplace.plan(recipes(zoo, names)["swarm dense, experts"])
    with pytest.raises(RuntimeError, match="boom"), inplace.applied(plan):
        raise RuntimeError("boom")
    assert_bitwise(before, inplace.model)


def test_other_dtypes_go_through_the_merge_path(setup):
    zoo, session, ev, inplace, names = setup
    ex = [str(zoo.experts[n]) for n in names[:2]]
    base = str(zoo.base)
    for recipe in [
        MergeRecipe(method="linear", models=ex, parameters={"weight": 1.0}, compute_dtype="input"),
        MergeRecipe(method="linear", models=ex, parameters={"weight": 1.0}, dtype="bfloat16"),
        MergeRecipe(
            method="ties",
            base=base,
            models=ex,
            parameters={"density": 0.5, "weight": 1.0},
            dtype="bfloat16",
        ),
        MergeRecipe(method="model_stock", base=base, models=ex),  # not in KERNEL_METHODS
    ]:
        assert inplace.plan(recipe) is None, recipe.method
    state = session.merge_recipe(
        MergeRecipe(method="ties", base=base, models=ex, parameters={"density": 0.5, "weight": 1.0})
    )
    before = snapshot(inplace.model)
    with inplace.loaded(state) as m:
        got = ev.score(m)
    assert_bitwise(before, inplace.model)
    want = ev.score(session.to_model(state))
    session.to_model(session.base.state)
    assert got == pytest.approx(want, abs=1e-6)


def test_search_backend_scores_affine_candidates_in_place(setup):
    """EngineBackend: the uniform average and SLERP in place; both as the merge path scores."""
    from hub_merge.search.backend import EngineBackend

    zoo, session, ev, _, names = setup
    folders = {n: zoo.adapters[n] for n in names}
    backend = EngineBackend(session, ev, folders, base_source="@base", keep_models=2)
    uniform = MergeRecipe(
        method="linear", models=[ModelEntry(model=n, parameters={"weight": 1.0}) for n in names]
    )
    slerp = MergeRecipe(
        method="slerp", base=names[0], models=[ModelEntry(model=names[1])], parameters={"t": 0.3}
    )
    got = {}
    for label, recipe in (("uniform", uniform), ("slerp", slerp)):
        before = backend.in_place
        got[label] = backend.evaluate(recipe)
        assert backend.in_place == before + 1  # SLERP too: its kernel on the adapted modules
    model = backend._inplace.model
    base_state = snapshot(model)
    for label, recipe in (("uniform", uniform), ("slerp", slerp)):
        want = ev.score(session.to_model(backend.state(recipe)))
        for task in want:
            assert got[label][task] == pytest.approx(want[task], abs=1e-5), (label, task)
    session.to_model(session.base.state)
    assert_bitwise(base_state, model)


def kernel_recipe(method: str, inputs: list[str], base: str) -> MergeRecipe:
    """A candidate of ``method`` over three inputs (two for SLERP), with its usual settings."""
    per = {
        "ties": {"weight": 0.7, "density": 0.5},
        "dare_ties": {"weight": 0.7, "density": 0.5},
        "dare_linear": {"weight": 0.5, "density": 0.6},
        "della": {"weight": 0.6, "density": 0.5, "epsilon": 0.1},
        "della_linear": {"weight": 0.6, "density": 0.5, "epsilon": 0.1},
        "breadcrumbs": {"weight": 0.6, "density": 0.8, "gamma": 0.05},
        "breadcrumbs_ties": {"weight": 0.6, "density": 0.8, "gamma": 0.05},
        "task_arithmetic": {"weight": 0.6},
        "nuslerp": {"weight": 0.5},
        "multislerp": {"weight": 0.5},
    }.get(method, {})
    extra = {
        "sce": {"select_topk": 0.5},
        "task_arithmetic": {"int8_mask": False},  # a setting the affine form does not take
    }.get(method, {})
    if method == "slerp":
        return MergeRecipe(
            method="slerp",
            base=inputs[0],
            models=[ModelEntry(model=inputs[1])],
            parameters={"t": 0.3},
        )
    if method == "nuslerp":  # two models, no base
        models = [
            ModelEntry(model=m, parameters={"weight": w})
            for m, w in zip(inputs[:2], [0.4, 0.6], strict=True)
        ]
        return MergeRecipe(method="nuslerp", models=models)
    uses_base = method not in ("multislerp", "karcher")
    return MergeRecipe(
        method=method,
        base=base if uses_base else None,
        models=[ModelEntry(model=m, parameters=dict(per)) for m in inputs],
        parameters=extra,
        seed=3 if method.startswith(("dare", "della")) else None,
    )


@pytest.mark.parametrize("method", KERNEL_METHODS)
def test_kernel_candidates_equal_the_merge_path(setup, method):
    """Every kernel method in place: the merge path's tensors, its scores, the base restored."""
    zoo, session, ev, inplace, names = setup
    model = inplace.model
    before = snapshot(model)
    recipe = kernel_recipe(method, [str(zoo.adapters[n]) for n in names], str(zoo.base))
    plan = inplace.plan(recipe)
    assert plan is not None and plan.kernel is not None, method
    adapted: set[str] = set()
    for n in names:
        adapted |= set(session.load(str(zoo.adapters[n])).source.adapter.names)
    assert set(plan.kernel.touched) == adapted & set(inplace.targets)
    with inplace.applied(plan) as m:
        live = {k: v.detach().clone() for k, v in m.state_dict().items()}
        fast = ev.score(m)
    assert_bitwise(before, model)
    want = session.merge_recipe(recipe)
    for name in inplace.targets:
        if name in plan.kernel.touched:  # the same kernel on the same inputs: the same bits
            assert torch.equal(live[name], want[name]), (method, name)
        else:  # the base; the merge path's f(base, ..., base) is the base up to rounding
            torch.testing.assert_close(live[name], want[name], rtol=1e-6, atol=1e-7)
    slow = ev.score(session.to_model(want))
    session.to_model(session.base.state)
    assert_bitwise(before, model)
    for task in slow:
        assert fast[task] == pytest.approx(slow[task], abs=1e-5), (method, task)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp"])
def test_kernel_candidates_of_full_experts_touch_every_tensor(setup, method):
    zoo, session, ev, inplace, names = setup
    before = snapshot(inplace.model)
    recipe = kernel_recipe(method, [str(zoo.experts[n]) for n in names], str(zoo.base))
    plan = inplace.plan(recipe)
    assert plan is not None and plan.kernel is not None
    assert plan.kernel.touched == list(inplace.targets)
    with inplace.applied(plan) as m:
        live = {k: v.detach().clone() for k, v in m.state_dict().items()}
    assert_bitwise(before, inplace.model)
    want = session.merge_recipe(recipe)
    for name in inplace.targets:
        assert torch.equal(live[name], want[name]), (method, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_candidates_in_place_on_cuda(tiny_zoo):
    session = MergeSession(tiny_zoo.base, device="cuda")
    inplace = InPlaceModel(session, base_source=str(tiny_zoo.base))
    before = snapshot(inplace.model)
    adapters = [str(tiny_zoo.adapters[n]) for n in ("add", "reverse", "uppercase")]
    for method in ("ties", "dare_ties", "slerp"):
        recipe = kernel_recipe(method, adapters, str(tiny_zoo.base))
        plan = inplace.plan(recipe)
        assert plan is not None and plan.kernel is not None
        with inplace.applied(plan) as m:
            live = {k: v.detach().clone() for k, v in m.state_dict().items()}
        assert_bitwise(before, inplace.model)
        want = session.merge_recipe(recipe)
        for name in plan.kernel.touched:
            assert torch.equal(live[name], want[name]), (method, name)
