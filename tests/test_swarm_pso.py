"""Model Swarms' PSO on coefficient vectors: the paper's rule, exactness against real tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hub_merge.errors import ConfigError, IncompatibleModelsError
from hub_merge.merge import MergeSession, merge_to_folder
from hub_merge.merge.adapter_mix import FactorMix
from hub_merge.search.pso import ParticleSwarm, SwarmSettings, position_recipe
from hub_merge.tensors import CheckpointReader, LoraAdapterReader


def _run(swarm: ParticleSwarm, fitness) -> list[np.ndarray]:
    asked = []
    while (x := swarm.ask()) is not None:
        asked.append(x)
        swarm.tell([fitness(row) for row in x])
    return asked


def _quadratic(target):
    return lambda a: -float(((np.asarray(a) - target) ** 2).sum())


def test_particles_start_at_experts_and_stay_affine():
    s = ParticleSwarm(3, SwarmSettings(population=7, max_steps=5), seed=1)
    asked = _run(s, _quadratic(np.array([0.2, 0.5, 0.3])))
    first = asked[0]
    np.testing.assert_allclose(first[:3], np.eye(3))
    for row in first[3:]:  # crossover children t·e_a + (1−t)·e_b: two entries, t in (0, 2)
        nz = np.flatnonzero(np.abs(row) > 1e-12)
        assert len(nz) <= 2 and -1 < row.min() and row.max() < 2
    for x in asked:
        np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-9)
    assert len(asked) == 6 and s.stop_reason() == "max steps (5) reached"


def test_swarm_improves_on_every_expert_and_uniform():
    target = np.array([0.55, 0.35, 0.1, 0.0])
    fit = _quadratic(target)
    s = ParticleSwarm(4, SwarmSettings(population=8), seed=0)
    _run(s, fit)
    best = s.summary()["best_fitness"]
    assert best > max(fit(np.eye(4)[i]) for i in range(4))
    assert best > fit(np.full(4, 0.25))
    assert best == pytest.approx(fit(s.summary()["best_alpha"]))
    assert s.stop_reason().startswith("no new global best")


def test_uniform_particle_starts_beside_the_experts():
    s = ParticleSwarm(3, SwarmSettings(population=5, uniform_particle=True), seed=0)
    first = s.ask()
    np.testing.assert_allclose(first[3], [1 / 3] * 3)
    with pytest.raises(ConfigError, match="--population 4 or more"):
        ParticleSwarm(3, SwarmSettings(uniform_particle=True), seed=0)


def test_same_seed_same_questions_and_another_seed_differs():
    fit = _quadratic(np.array([0.3, 0.3, 0.4]))
    a = _run(ParticleSwarm(3, SwarmSettings(population=5, max_steps=8), seed=7), fit)
    b = _run(ParticleSwarm(3, SwarmSettings(population=5, max_steps=8), seed=7), fit)
    c = _run(ParticleSwarm(3, SwarmSettings(population=5, max_steps=8), seed=8), fit)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    r1 = [position_recipe("dense", "B", ["e0", "e1", "e2"], row).recipe_hash() for row in a[3]]
    r2 = [position_recipe("dense", "B", ["e0", "e1", "e2"], row).recipe_hash() for row in b[3]]
    assert r1 == r2


def test_patience_budget_and_restarts():
    flat = ParticleSwarm(3, SwarmSettings(patience=3), seed=0)
    asked = _run(flat, lambda a: 1.0)  # never a new best after step 0
    assert len(asked) == 4 and flat.stop_reason() == "no new global best for 3 steps"
    assert flat.restarts > 0  # stale particles (0.5·3 steps) went back to their best
    budget = ParticleSwarm(3, SwarmSettings(population=4), seed=0, budget=10)
    asked = _run(budget, _quadratic(np.array([0.2, 0.2, 0.6])))
    assert len(asked) == 2 and budget.evaluations == 8
    assert budget.stop_reason() == "budget of 10 evaluations reached"


def test_step_length_decays_to_floor():
    s = ParticleSwarm(2, SwarmSettings(max_steps=60, patience=100), seed=0)
    _run(s, _quadratic(np.array([0.5, 0.5])))
    lengths = [h["step_length"] for h in s.history]
    # the λ that moved the swarm to each step: the first move uses λ = 1, then ×0.95
    assert lengths[1] == 1.0 and lengths[2] == pytest.approx(0.95)
    assert lengths[-1] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "settings, n, match",
    [
        (SwarmSettings(), 1, "at least 2 experts"),
        (SwarmSettings(population=2), 3, "population 2 is smaller than the 3 experts"),
        (SwarmSettings(space="weights"), 3, "not one of dense, adapter"),
    ],
)
def test_bad_settings_are_typed_errors(settings, n, match):
    with pytest.raises(ConfigError, match=match):
        ParticleSwarm(n, settings, seed=0)


# --- the paper's way, on real tensors --------------------------------------------------------


def _paper_swarm(experts, fitness, settings, seed, steps):
    """Model Swarms as the authors run it: positions and velocities are the weights themselves.

    ``experts`` are dicts of float64 tensors; the same numpy draws as the coefficient form.
    Returns the positions evaluated at each step.
    """
    rng = np.random.default_rng(seed)
    n, size = len(experts), settings.population
    lin = lambda *terms: {  # noqa: E731 - Σ c·position, tensor by tensor
        k: sum(c * p[k] for c, p in terms) for k in experts[0]
    }
    x = [dict(e) for e in experts]
    while len(x) < size:
        a, b = rng.choice(n, size=2, replace=False)
        t = rng.uniform(0.0, 2.0)
        x.append(lin((t, experts[a]), (1.0 - t, experts[b])))
    j = rng.integers(0, size - 1, size=size)
    j = j + (j >= np.arange(size))
    v = [lin((1.0, x[j[i]]), (-1.0, x[i])) for i in range(size)]
    p, p_fit, stale = list(x), [-np.inf] * size, [0] * size
    g = g_w = None
    g_fit, gw_fit, lam = -np.inf, np.inf, settings.step_length
    phi = np.array([settings.phi_v, settings.phi_p, settings.phi_g, settings.phi_w])
    history = []
    for step in range(steps):
        if step > 0:
            r = rng.uniform(0.0, 1.0, size=(size, 4)) * phi
            w = r / r.sum(axis=1, keepdims=True)
            for i in range(size):
                a, b, c, d = w[i]
                v[i] = lin(
                    (a, v[i]), (b, p[i]), (-b, x[i]), (c, g), (-c, x[i]), (d, x[i]), (-d, g_w)
                )
                x[i] = lin((1.0, x[i]), (lam, v[i]))
                if stale[i] >= settings.restart_patience * settings.patience:
                    x[i], v[i], stale[i] = p[i], lin((0.0, x[i])), 0
        history.append(list(x))
        f = [fitness(xi) for xi in x]
        for i in range(size):
            if f[i] > p_fit[i]:
                p[i], p_fit[i], stale[i] = x[i], f[i], 0
            else:
                stale[i] += 1
        if max(f) > g_fit:
            g, g_fit = x[int(np.argmax(f))], max(f)
        if min(f) < gw_fit:
            g_w, gw_fit = x[int(np.argmin(f))], min(f)
        if step > 0:
            lam = max(lam * settings.step_decay, settings.min_step)
    return history


def _state(folder):
    reader = CheckpointReader(folder)
    return {n: reader.get(n) for n in reader.names}


def _close(a, b, atol=2e-5):
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-4, atol=atol)


SETTINGS = SwarmSettings(population=6, patience=10, restart_patience=0.2, max_steps=50)
STEPS = 8


def test_dense_coefficients_give_the_papers_weights(tiny_zoo):
    names = sorted(tiny_zoo.experts)
    folders = [str(tiny_zoo.experts[t]) for t in names]
    experts = [{k: v.double() for k, v in _state(f).items()} for f in folders]
    target = {
        k: 0.6 * experts[0][k] + 0.5 * experts[1][k] - 0.1 * experts[2][k] for k in experts[0]
    }

    def fitness(state):
        return -float(sum(((state[k].double() - target[k]) ** 2).sum() for k in target))

    paper = _paper_swarm(experts, fitness, SETTINGS, seed=3, steps=STEPS)
    session = MergeSession(tiny_zoo.base, device="cpu", dtype=torch.float32)
    swarm = ParticleSwarm(len(names), SETTINGS, seed=3)
    for step in range(STEPS):
        alphas = swarm.ask()
        states = [
            session.merge_recipe(position_recipe("dense", str(tiny_zoo.base), folders, a))
            for a in alphas
        ]
        for state, reference in zip(states, paper[step], strict=True):
            _close(state, reference)
        swarm.tell([fitness(s) for s in states])
    assert swarm.restarts > 0  # the comparison covered restarts, crossover and decay


def test_adapter_coefficients_give_the_papers_factors(tiny_zoo, tmp_path):
    names = sorted(tiny_zoo.adapters)
    folders = [str(tiny_zoo.adapters[t]) for t in names]
    readers = [LoraAdapterReader(f) for f in folders]
    modules = readers[0].names
    experts = []  # the paper's position of an adapter: its lora_A and (scaled) lora_B tensors
    for r in readers:
        pos = {}
        for m in modules:
            f = r.factors(m)
            pos[m + ":A"], pos[m + ":B"] = f.A.double(), f.B.double() * f.scale
        experts.append(pos)
    base = _state(tiny_zoo.base)

    def dense(pos):
        out = dict(base)
        for m in modules:
            out[m] = base[m].double() + pos[m + ":B"].double() @ pos[m + ":A"].double()
        return out

    def fitness(state):  # a function of the model's weights W = W_base + B·A (not of A, B alone)
        return -float(sum((state[m].double() ** 2).sum() for m in modules))

    paper = _paper_swarm(experts, lambda pos: fitness(dense(pos)), SETTINGS, seed=5, steps=STEPS)
    session = MergeSession(tiny_zoo.base, device="cpu", dtype=torch.float32)
    mix = FactorMix(folders)
    swarm = ParticleSwarm(len(names), SETTINGS, seed=5)
    for step in range(STEPS):
        alphas = swarm.ask()
        fits = []
        for a, reference in zip(alphas, paper[step], strict=True):
            factors = mix.mix(a)
            for m in modules:
                torch.testing.assert_close(
                    factors[m].A.double(), reference[m + ":A"], atol=1e-6, rtol=1e-5
                )
                torch.testing.assert_close(
                    factors[m].B.double(), reference[m + ":B"], atol=1e-6, rtol=1e-5
                )
            state = session.merge_recipe(position_recipe("adapter", str(tiny_zoo.base), folders, a))
            _close({m: state[m] for m in modules}, {m: dense(reference)[m] for m in modules})
            fits.append(fitness(state))
        swarm.tell(fits)
    assert swarm.restarts > 0
    # The winner is an adapter folder that peft loads, with the weights scored in memory.
    best = position_recipe("adapter", str(tiny_zoo.base), folders, swarm.summary()["best_alpha"])
    out = merge_to_folder(best, tmp_path / "winner")
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.base, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(model, out).merge_and_unload().state_dict()
    expect = session.merge_recipe(best)
    for m in modules:
        torch.testing.assert_close(loaded[m], expect[m], atol=1e-5, rtol=1e-4)


# --- adapter-space refusals ------------------------------------------------------------------


def test_adapter_space_refuses_full_models_and_mixed_ranks(tiny_zoo, tmp_path):
    with pytest.raises(IncompatibleModelsError, match="full model, not a LoRA adapter.*dense"):
        FactorMix([tiny_zoo.adapters["add"], tiny_zoo.experts["sort"]])
    from tests.fixtures.merge import save_lora

    small = tmp_path / "rank2"
    save_lora(tiny_zoo.base, small, None, seed=1, r=2)
    with pytest.raises(IncompatibleModelsError, match="different ranks.*dense space"):
        FactorMix([tiny_zoo.adapters["add"], small])
    recipe = position_recipe(
        "adapter", str(tiny_zoo.base), [str(tiny_zoo.adapters["add"]), str(small)], [0.5, 0.5]
    )
    with pytest.raises(IncompatibleModelsError, match="different ranks"):
        merge_to_folder(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_harmonic_combine_favours_balance_over_the_mean():
    from hub_merge.evaluate import fitness_from_scores

    balanced, lopsided = {"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.1}
    assert fitness_from_scores(balanced, "exact_match") == fitness_from_scores(
        lopsided, "exact_match"
    )
    assert fitness_from_scores(balanced, "exact_match", combine="harmonic") == pytest.approx(0.5)
    assert fitness_from_scores(lopsided, "exact_match", combine="harmonic") == pytest.approx(0.18)
    # a loss enters as exp(−loss): lower loss, higher fitness; a zero accuracy gives 0
    low, high = {"a": 0.2, "b": 0.3}, {"a": 0.2, "b": 2.0}
    assert fitness_from_scores(low, "answer_loss", combine="harmonic") > fitness_from_scores(
        high, "answer_loss", combine="harmonic"
    )
    assert fitness_from_scores({"a": 1.0, "b": 0.0}, "exact_match", combine="harmonic") == 0.0
    with pytest.raises(ConfigError, match="Unknown combine 'max'"):
        fitness_from_scores(low, "answer_loss", combine="max")


def test_factor_recipe_is_checked_before_writing(tiny_zoo, tmp_path):
    from hub_merge.merge import MergeRecipe

    ads = [str(tiny_zoo.adapters["add"]), str(tiny_zoo.adapters["sort"])]
    bad = [
        ({"method": "lora_factor_sum", "models": ads}, "needs `base:`"),
        ({"method": "lora_factor_sum", "base": str(tiny_zoo.base), "models": ads}, "weight"),
        (
            {
                "method": "lora_factor_sum",
                "base": str(tiny_zoo.base),
                "models": [{"model": a, "parameters": {"weight": [0, 1]}} for a in ads],
            },
            "must be a number",
        ),
    ]
    for data, match in bad:
        with pytest.raises(ConfigError, match=match):
            merge_to_folder(MergeRecipe.from_dict(data), tmp_path / "out")
        assert not (tmp_path / "out").exists()
