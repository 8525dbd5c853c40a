"""In-place candidates: same scores as the merge path, and the model restored bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from hub_merge.evaluate import Evaluator, load_tasks
from hub_merge.merge import MergeSession
from hub_merge.merge.adapter_mix import factor_recipe
from hub_merge.merge.inplace import InPlaceModel
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


def test_non_affine_recipes_go_through_the_merge_path(setup):
    zoo, session, ev, inplace, names = setup
    ex = [str(zoo.experts[n]) for n in names[:2]]
    base = str(zoo.base)
    for recipe in [
        MergeRecipe(
            method="ties", base=base, models=ex, parameters={"density": 0.5, "weight": 1.0}
        ),
        MergeRecipe(method="slerp", base=ex[0], models=[ex[1]], parameters={"t": 0.5}),
        MergeRecipe(
            method="dare_linear",
            base=base,
            models=ex,
            parameters={"density": 0.5, "weight": 0.5},
            seed=1,
        ),
        MergeRecipe(method="linear", models=ex, parameters={"weight": 1.0}, compute_dtype="input"),
        MergeRecipe(method="linear", models=ex, parameters={"weight": 1.0}, dtype="bfloat16"),
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
    """EngineBackend: the uniform average in place, SLERP merged; both as the merge path scores."""
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
        assert backend.in_place == before + (label == "uniform")
    model = backend._inplace.model
    base_state = snapshot(model)
    for label, recipe in (("uniform", uniform), ("slerp", slerp)):
        want = ev.score(session.to_model(backend.state(recipe)))
        for task in want:
            assert got[label][task] == pytest.approx(want[task], abs=1e-5), (label, task)
    session.to_model(session.base.state)
    assert_bitwise(base_state, model)
