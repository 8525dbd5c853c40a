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
    for k in range(3, len(first)):  # crossover children t·x_a + (1−t)·x_b, t in [0, 2), of
        # two earlier particles (the reference's growing list: children can be parents)
        found = False
        for i in range(k):
            for j in range(k):
                d = first[i] - first[j]
                if i == j or not d.any():
                    continue
                t = float(d @ (first[k] - first[j]) / (d @ d))
                if 0 <= t < 2 and np.allclose(t * first[i] + (1 - t) * first[j], first[k]):
                    found = True
        assert found, first[k]
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
    # the reference: stop once the last 3 values of g's history (one per step) are equal and
    # more than 3 are recorded, i.e. after 3 moves here
    assert len(asked) == 4 and flat.stop_reason() == "no new global best for 3 steps"
    assert flat.restarts > 0  # stale particles (0.5·3 steps) went back to their best
    # a new best at move 3: stop after patience − 1 = 3 more moves (the reference's count)
    late = ParticleSwarm(3, SwarmSettings(patience=4), seed=0)
    calls = []

    def late_best(a):
        calls.append(1)
        return 2.0 if len(calls) == 3 * 3 + 1 else 1.0  # the first particle of move 3

    asked = _run(late, late_best)
    assert len(asked) == 1 + 3 + 3
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
        (SwarmSettings(space="weights"), 3, "not one of auto, dense, adapter"),
    ],
)
def test_bad_settings_are_typed_errors(settings, n, match):
    with pytest.raises(ConfigError, match=match):
        ParticleSwarm(n, settings, seed=0)


# --- the paper's way, on real tensors --------------------------------------------------------


def _paper_swarm(experts, fitness, settings, seed, steps):
    """Model Swarms as the authors run it: positions and velocities are the weights themselves.

    ``experts`` are dicts of float64 tensors; the same numpy draws as the coefficient form. The
    loop is the reference's (BunsenFeng/model_swarm search.py): crossover parents from the
    growing list, a stray particle restarts at its best *before* its move in the same iteration
    and keeps restarting until its best improves, the last worst is the global worst.
    Returns the positions evaluated at each step.
    """
    rng = np.random.default_rng(seed)
    size = settings.population
    lin = lambda *terms: {  # noqa: E731 - Σ c·position, tensor by tensor
        k: sum(c * p[k] for c, p in terms) for k in experts[0]
    }
    x = [dict(e) for e in experts]
    while len(x) < size:
        a, b = rng.choice(len(x), size=2, replace=False)
        t = rng.uniform(0.0, 2.0)
        x.append(lin((t, x[a]), (1.0 - t, x[b])))
    j = rng.integers(0, size - 1, size=size)
    j = j + (j >= np.arange(size))
    v = [lin((1.0, x[j[i]]), (-1.0, x[i])) for i in range(size)]
    p, p_fit, hist = list(x), [-np.inf] * size, [[] for _ in range(size)]
    g = g_w = None
    g_fit, gw_fit, lam = -np.inf, np.inf, settings.step_length
    phi = np.array([settings.phi_v, settings.phi_p, settings.phi_g, settings.phi_w])
    history = []
    for step in range(steps):
        if step > 0:
            for i in range(size):  # restart flags first, from the histories
                if len(hist[i]) - hist[i].index(p_fit[i]) >= (
                    settings.restart_patience * settings.patience
                ):
                    x[i], v[i] = p[i], lin((0.0, x[i]))
            r = rng.uniform(0.0, 1.0, size=(size, 4)) * phi
            w = r / r.sum(axis=1, keepdims=True)
            for i in range(size):
                a, b, c, d = w[i]
                v[i] = lin(
                    (a, v[i]), (b, p[i]), (-b, x[i]), (c, g), (-c, x[i]), (d, x[i]), (-d, g_w)
                )
                x[i] = lin((1.0, x[i]), (lam, v[i]))
        history.append(list(x))
        f = [fitness(xi) for xi in x]
        for i in range(size):
            hist[i].append(f[i])
            if f[i] > p_fit[i]:
                p[i], p_fit[i] = x[i], f[i]
        if max(f) > g_fit:
            g, g_fit = x[int(np.argmax(f))], max(f)
        if min(f) < gw_fit:
            g_w, gw_fit = x[len(f) - 1 - int(np.argmin(f[::-1]))], min(f)
        if step > 0:
            lam = max(lam * settings.step_decay, settings.min_step)
    return history


def _reference_loop(n, settings, seed, fitness):
    """The reference's search loop on coefficient vectors, written from its code and the paper.

    Mirrors BunsenFeng/model_swarm ``search.py`` statement by statement (its utility
    scratchpad: per-particle histories, ``g_history``; the patience test at the top of each
    iteration; restart flags from ``history.index(best)``; ``particle_update``'s restart then
    move), with positions as α vectors over the experts and the draws in our documented order.
    Returns the positions evaluated per iteration, the number of restarts and why it stopped.
    """
    rng = np.random.default_rng(seed)
    size = settings.population or n
    paths = [np.eye(n)[i] for i in range(n)]
    while len(paths) < size:  # populate_initial_experts: parents from the growing list
        a, b = rng.choice(len(paths), size=2, replace=False)
        w_1 = rng.uniform(0.0, 2.0)
        paths.append(w_1 * paths[a] + (1 - w_1) * paths[b])
    now = [x.copy() for x in paths]
    best = [x.copy() for x in paths]
    lover = rng.integers(0, size - 1, size=size)
    lover = lover + (lover >= np.arange(size))
    velocity = [now[lover[i]] - now[i] for i in range(size)]
    results = [fitness(x) for x in now]
    pad = {"g": max(results), "g_worst": min(results), "g_history": [max(results)]}
    for i in range(size):
        pad[f"{i}_now"] = pad[f"{i}_best"] = results[i]
        pad[f"{i}_history"] = [results[i]]
    global_best = now[results.index(max(results))].copy()
    global_worst = now[results.index(min(results))].copy()
    evaluated = [np.array(now)]
    restarts, step_length, iteration, why = 0, settings.step_length, 0, "max steps"
    while iteration < settings.max_steps:
        iteration += 1
        g_history = pad["g_history"]
        if len(g_history) > settings.patience:
            g_history = g_history[-settings.patience :]
            if max(g_history) == min(g_history):
                why = "patience"
                break
        flags = []
        for i in range(size):
            history = pad[f"{i}_history"]
            first_time_best_idx = history.index(pad[f"{i}_best"])
            flags.append(
                len(history) - first_time_best_idx >= settings.restart_patience * settings.patience
            )
        draws = rng.uniform(0.0, 1.0, size=(size, 4))
        for i in range(size):  # particle_update
            if flags[i]:
                now[i] = best[i].copy()
                velocity[i] = 0 * now[i]
                restarts += 1
            r_w, r_p, r_s, r_b = draws[i]
            weights = np.array(
                [
                    r_w * settings.phi_v,
                    r_p * settings.phi_p,
                    r_s * settings.phi_g,
                    r_b * settings.phi_w,
                ]
            )
            sw, cw, scw, rw = weights / weights.sum()
            p_x, g_x, x_w = best[i] - now[i], global_best - now[i], now[i] - global_worst
            velocity[i] = sw * velocity[i] + cw * p_x + scw * g_x + rw * x_w
            now[i] = now[i] + step_length * velocity[i]
        evaluated.append(np.array(now))
        results = [fitness(x) for x in now]
        for i in range(size):
            pad[f"{i}_now"] = results[i]
            pad[f"{i}_history"].append(results[i])
            if results[i] > pad[f"{i}_best"]:
                pad[f"{i}_best"] = results[i]
                best[i] = now[i].copy()
        if max(results) > pad["g"]:
            pad["g"] = max(results)
            pad["g_history"].append(max(results))
            global_best = now[results.index(pad["g"])].copy()
        else:
            pad["g_history"].append(pad["g"])
        if min(results) < pad["g_worst"]:
            pad["g_worst"] = min(results)
            for i in range(size):
                if results[i] == pad["g_worst"]:
                    global_worst = now[i].copy()
        step_length = max(step_length * settings.step_decay, settings.min_step)
    return evaluated, restarts, why


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replays_the_reference_loop_on_coefficient_vectors(seed):
    # a coarse fitness (rounded): plateaus make particles stray (restarts) and the patience stop
    # come late, after new global bests: the cases where the rule's details matter
    target = np.array([0.5, 0.8, -0.3])

    def fitness(a):
        return round(-float(((np.asarray(a) - target) ** 2).sum()), 1)

    settings = SwarmSettings(population=7, patience=5, restart_patience=0.5, max_steps=40)
    expected, restarts, why = _reference_loop(3, settings, seed, fitness)
    swarm = ParticleSwarm(3, settings, seed=seed)
    asked = _run(swarm, fitness)
    assert len(asked) == len(expected)
    for ours, theirs in zip(asked, expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert swarm.restarts == restarts and restarts > 0
    assert why == "patience" and swarm.stop_reason() == "no new global best for 5 steps"


def test_velocity_modes_and_switches():
    fit = _quadratic(np.array([0.3, 0.3, 0.4]))
    zero = ParticleSwarm(3, SwarmSettings(starting_velocity="zero"), seed=0)
    np.testing.assert_array_equal(zero.v, 0.0)
    best = ParticleSwarm(3, SwarmSettings(starting_velocity="best"), seed=0)
    x = best.ask()
    best.tell([fit(a) for a in x])
    np.testing.assert_allclose(best.v, best.g - x)
    # without weight randomness or repel the move is deterministic: a = φ_v / Σφ, ... and d = 0
    s = ParticleSwarm(3, SwarmSettings(weight_randomness=False, repel=False, restart=False), seed=0)
    x0 = s.ask()
    s.tell([fit(a) for a in x0])
    v0, g = s.v.copy(), s.g.copy()
    x1 = s.ask()
    a, b, c = 0.4 / 1.0, 0.3 / 1.0, 0.3 / 1.0
    np.testing.assert_allclose(x1, x0 + (a * v0 + b * (x0 - x0) + c * (g - x0)))
    assert not s.settings.restart
    with pytest.raises(ConfigError, match="starting velocity 'fast'"):
        ParticleSwarm(3, SwarmSettings(starting_velocity="fast"), seed=0)


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
