"""Model Swarms' particle swarm (Feng et al. 2024, arXiv:2410.11163) on coefficient vectors.

Every update of the paper is an affine combination of positions (velocity update, step, crossover,
restart), and every particle starts at an expert, so each position is ``Σ_j α_j · expert_j`` with
``Σ_j α_j = 1`` (design/search-core.md, "Particles are coefficient vectors"). This module runs the
paper's swarm on those N-vectors α. It knows nothing about tensors, files or the Hub: the strategy
(``hub_merge.search.strategies.swarm``) turns a position into a :class:`MergeRecipe`, and the
core scores it. Written by hand: no PSO library implements the paper's rule (its velocity weights
are random draws renormalised to sum 1, it is repelled from the global *worst*, and it restarts
stale particles at their personal best), and the loop is ~100 lines of numpy.

The algorithm (design/algorithms.md, section 3)::

    x_i = expert i; grow to `population` by x = t·x_a + (1−t)·x_b, t ~ U(0, 2), the parents
        drawn from the growing list (children can be parents)
    v_i = x_j − x_i for a random j ≠ i ("random"; or 0, or g − x_i after the first evaluation)
    evaluate all: p_i = x_i, g = best, g_w = worst
    repeat (at most max_steps times), as the reference's loop (BunsenFeng/model_swarm search.py):
        stop if the last `patience` values of g's history are equal (history: one per step)
        per particle: if restart is on and p_i was first reached ≥ restart_patience·patience
            history entries ago: x_i = p_i, v_i = 0 (then it moves, in this same iteration;
            it keeps restarting every iteration until p_i improves)
        r_v, r_p, r_g, r_w ~ U(0, 1) (or 1 without weight randomness); (a, b, c, d) = r·φ / Σ r·φ
        (d = 0 without repel)
        v_i ← a v_i + b (p_i − x_i) + c (g − x_i) + d (x_i − g_w);   x_i ← x_i + λ v_i
        evaluate all; update p_i, g (first best), g_w (last worst);  λ ← max(λ·0.95, 0.1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..merge.adapter_mix import factor_recipe
from ..merge.recipe import MergeRecipe, ModelEntry

SPACES = ("auto", "dense", "adapter")
VELOCITY_MODES = ("random", "zero", "best")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SwarmSettings:
    """Model Swarms' knobs; defaults are the authors' (BunsenFeng/model_swarm).

    Attributes:
        space: ``dense`` (a particle is ``task_arithmetic(base, τ_j, weight α_j)``; full models
            or LoRA task vectors densified per tensor), ``adapter`` (LoRA experts only: the
            adapter with ``A = Σ α_j A_j``, ``B = Σ α_j B_j``, as the paper; the winner is an
            adapter) or ``auto`` (adapter when every expert is a LoRA adapter of one rank on
            the base, else dense).
        population: particles; None = one per expert. More are made by crossover.
        uniform_particle: one of the extra particles starts at the uniform average α = 1/N
            (not in the paper: it lets a small swarm start from the one-shot baseline).
        patience: steps without a new global best before stopping.
        max_steps: PSO steps at most (the initial evaluation is step 0).
        restart_patience: a particle stale for ``restart_patience * patience`` steps restarts at
            its personal best with zero velocity.
        phi_v, phi_p, phi_g, phi_w: inertia, cognitive, social and repel-from-worst weights.
        step_length: λ, the initial step length; decays ×``step_decay`` per step to ``min_step``.
        starting_velocity, weight_randomness, repel, restart: the reference's switches
            (``--starting_velocity_mode``, ``--weight_randomess``, ``--repel_term``,
            ``--restart_stray_particles``), with its defaults.
    """

    space: str = field(
        default="auto",
        metadata=_help(
            "auto: adapter when every expert is a LoRA adapter of one rank on the base (the "
            "paper's), else dense; dense: task arithmetic with weights α (full models or LoRA); "
            "adapter: LoRA factors mixed A = Σα A, B = Σα B (the winner is an adapter)."
        ),
    )
    population: int | None = field(
        default=None,
        metadata=_help("Particles (default: one per expert; more are made by crossover)."),
    )
    uniform_particle: bool = field(
        default=False,
        metadata={
            "help": "Start one particle at the uniform average (α = 1/N) instead of a "
            "crossover child; needs a population above the number of experts (not in the paper).",
            "flag": "--uniform-particle/--no-uniform-particle",
        },
    )
    patience: int = field(
        default=10, metadata=_help("Stop after this many steps without a new global best.")
    )
    max_steps: int = field(default=200, metadata=_help("Maximum swarm steps."))
    restart_patience: float = field(
        default=0.5,
        metadata=_help(
            "A particle stale for restart_patience × patience steps restarts at its best."
        ),
    )
    phi_v: float = field(default=0.4, metadata=_help("Inertia weight φ_v."))
    phi_p: float = field(default=0.3, metadata=_help("Pull to the personal best, φ_p."))
    phi_g: float = field(default=0.3, metadata=_help("Pull to the global best, φ_g."))
    phi_w: float = field(default=0.3, metadata=_help("Push from the global worst, φ_w."))
    step_length: float = field(default=1.0, metadata=_help("Initial step length λ."))
    step_decay: float = field(default=0.95, metadata=_help("λ is multiplied by this each step."))
    min_step: float = field(default=0.1, metadata=_help("λ never decays below this."))
    starting_velocity: str = field(
        default="random",
        metadata=_help(
            "Initial velocity: random (x_j − x_i, a random other particle j; the reference's "
            "default), zero, or best (g − x_i after the first evaluation)."
        ),
    )
    weight_randomness: bool = field(
        default=True,
        metadata={
            "help": "Draw r_v, r_p, r_g, r_w ~ U(0, 1) each step (off: all 1).",
            "flag": "--weight-randomness/--no-weight-randomness",
        },
    )
    repel: bool = field(
        default=True,
        metadata={
            "help": "Push away from the global worst (off: φ_w is not used).",
            "flag": "--repel/--no-repel",
        },
    )
    restart: bool = field(
        default=True,
        metadata={
            "help": "Restart stray particles at their personal best with zero velocity.",
            "flag": "--restart/--no-restart",
        },
    )

    def validate(self, n_experts: int) -> None:
        """Refuse settings the swarm cannot run, before anything is scored."""
        if self.space not in SPACES:
            raise ConfigError(f"Swarm space {self.space!r} is not one of {', '.join(SPACES)}.")
        if self.starting_velocity not in VELOCITY_MODES:
            raise ConfigError(
                f"Swarm starting velocity {self.starting_velocity!r} is not one of "
                f"{', '.join(VELOCITY_MODES)}."
            )
        if n_experts < 2:
            raise ConfigError(
                f"A swarm needs at least 2 experts to combine; got {n_experts}. Add experts."
            )
        if self.population is not None and self.population < n_experts:
            raise ConfigError(
                f"Swarm population {self.population} is smaller than the {n_experts} experts "
                f"(each expert starts a particle): use --population {n_experts} or more."
            )
        if self.uniform_particle and (self.population or n_experts) <= n_experts:
            raise ConfigError(
                f"--uniform-particle adds a particle beside the {n_experts} experts: use "
                f"--population {n_experts + 1} or more."
            )
        if self.patience < 1 or self.max_steps < 1:
            raise ConfigError("Swarm patience and max steps must be at least 1.")
        if self.restart_patience <= 0:
            raise ConfigError("Swarm restart patience must be positive.")
        phis = (self.phi_v, self.phi_p, self.phi_g, self.phi_w if self.repel else 0.0)
        if min(phis) < 0 or sum(phis) <= 0:
            raise ConfigError(f"Swarm φ weights must be ≥ 0 and not all 0; got {phis}.")
        if not (0 < self.min_step <= self.step_length) or not (0 < self.step_decay <= 1):
            raise ConfigError(
                "Swarm step length: need 0 < min_step ≤ step_length and 0 < step_decay ≤ 1."
            )


class ParticleSwarm:
    """The swarm on α vectors, driven by ask/tell (higher fitness is better).

    ``ask`` returns the positions to evaluate (an array of shape ``(population, N)``) or None
    when the swarm has stopped; ``tell`` takes their fitness. Every random number comes from one
    numpy ``Generator`` seeded by ``seed``, drawn in a fixed order, so the same seed and the same
    fitness values replay the same positions (resume by replay). The draw order is part of the
    contract (the replay tests follow it): per crossover child ``choice(len(particles), 2)``
    (the growing list) then ``uniform(0, 2)``; then, for ``starting_velocity="random"``,
    ``integers(0, population − 1, population)``; then per move, with weight randomness,
    ``uniform(0, 1, (population, 4))`` for (r_v, r_p, r_g, r_w).
    """

    def __init__(
        self,
        n_experts: int,
        settings: SwarmSettings,
        *,
        seed: int,
        budget: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        settings.validate(n_experts)
        self.settings = settings
        self.n = n_experts
        self.size = settings.population or n_experts
        self.budget = budget
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.x = self._initial_positions()
        self.v = np.zeros_like(self.x)  # "zero"; "best" sets g − x_i after the first evaluation
        if settings.starting_velocity == "random":
            # v_i = x_j − x_i for a random j ≠ i (draw from the others, shifted past i).
            j = self.rng.integers(0, self.size - 1, size=self.size)
            j = j + (j >= np.arange(self.size))
            self.v = self.x[j] - self.x
        self.p = self.x.copy()
        self.p_fit = np.full(self.size, -np.inf)
        # evaluations since p_i was first reached (the reference: len(history) − 1 − its index)
        self.stale = np.zeros(self.size, dtype=int)
        self.g_history: list[float] = []  # g after each evaluation of the swarm (the reference's)
        self.g: np.ndarray | None = None
        self.g_fit = -np.inf
        self.g_w: np.ndarray | None = None
        self.gw_fit = np.inf
        self.step_length = settings.step_length
        self.step = 0  # steps evaluated; 0 = the initial positions are being evaluated
        self.since_best = 0
        self.evaluations = 0
        self.restarts = 0
        self._stop: str | None = None
        self._pending = False
        self.history: list[dict[str, Any]] = []

    # -- the swarm ------------------------------------------------------------------------------

    def _initial_positions(self) -> np.ndarray:
        """The experts (unit vectors), then crossover children ``t·x_a + (1−t)·x_b``, t ~ U(0, 2).

        As in the reference, the parents come from the growing list: a child can be a parent.
        """
        x = [np.eye(self.n)[i] for i in range(self.n)]
        if self.settings.uniform_particle:
            x.append(np.full(self.n, 1.0 / self.n))
        while len(x) < self.size:
            a, b = self.rng.choice(len(x), size=2, replace=False)
            t = self.rng.uniform(0.0, 2.0)
            x.append(t * x[a] + (1.0 - t) * x[b])
        return np.array(x, dtype=np.float64)

    def _move(self) -> None:
        """Restarts of stray particles, then one velocity update and step for every particle.

        As the reference: a particle whose personal best was first reached at least
        ``restart_patience · patience`` history entries ago (its history holds one entry per
        evaluation, the best's included) goes back to its best with zero velocity and moves
        in the same iteration; its count is not reset, so it restarts every iteration until
        its personal best improves.
        """
        s = self.settings
        if s.restart:
            limit = s.restart_patience * s.patience
            for i in np.flatnonzero(self.stale + 1 >= limit):
                self.x[i] = self.p[i]
                self.v[i] = 0.0
                self.restarts += 1
        phi = np.array([s.phi_v, s.phi_p, s.phi_g, s.phi_w if s.repel else 0.0])
        if s.weight_randomness:
            r = self.rng.uniform(0.0, 1.0, size=(self.size, 4)) * phi
        else:
            r = np.tile(phi, (self.size, 1))
        w = r / r.sum(axis=1, keepdims=True)
        a, b, c, d = (w[:, k : k + 1] for k in range(4))
        assert self.g is not None and self.g_w is not None
        self.v = (
            a * self.v + b * (self.p - self.x) + c * (self.g - self.x) + d * (self.x - self.g_w)
        )
        self.x = self.x + self.step_length * self.v

    def ask(self) -> np.ndarray | None:
        """Positions to evaluate now (rows sum to 1), or None once the swarm has stopped."""
        if self._pending:
            raise RuntimeError("tell() the previous positions before asking again.")
        if self._stop is None and self.budget is not None:
            if self.evaluations + self.size > self.budget:
                self._stop = f"budget of {self.budget} evaluations reached"
        if self._stop is not None:
            return None
        if self.step > 0:
            self._move()
        self._pending = True
        return self.x.copy()

    def tell(self, fitness: np.ndarray | list[float]) -> None:
        """Fitness of the positions last asked; updates p_i, g, g_w, λ and the stop test."""
        if not self._pending:
            raise RuntimeError("ask() before tell().")
        f = np.asarray(fitness, dtype=np.float64)
        if f.shape != (self.size,):
            raise ValueError(f"Expected {self.size} fitness values, got {f.shape}.")
        f = np.where(np.isfinite(f), f, -np.inf)  # a failed candidate is the worst possible
        self._pending = False
        self.evaluations += self.size
        better = f > self.p_fit
        self.p[better] = self.x[better]
        self.p_fit[better] = f[better]
        self.stale = np.where(better, 0, self.stale + 1)
        best = int(np.argmax(f))
        new_best = f[best] > self.g_fit
        if new_best:
            self.g, self.g_fit = self.x[best].copy(), float(f[best])
        worst = self.size - 1 - int(np.argmin(f[::-1]))  # the last worst, as the reference
        if self.g_w is None or f[worst] < self.gw_fit:
            self.g_w, self.gw_fit = self.x[worst].copy(), float(f[worst])
        self.g_history.append(self.g_fit)
        if self.step == 0 and self.settings.starting_velocity == "best":
            self.v = self.g - self.x
        self.since_best = 0 if new_best else self.since_best + 1
        self.history.append(self._record(f, bool(new_best)))
        if self.step > 0:  # λ decays after each move; the first move uses the initial λ
            self.step_length = max(
                self.step_length * self.settings.step_decay, self.settings.min_step
            )
        self.step += 1
        # The reference tests patience at the top of its next iteration (nothing changes in
        # between): stop when the last `patience` entries of g's history are one value, i.e.
        # after patience − 1 moves without a new best, once `patience` moves have run.
        patience = self.settings.patience
        recent = self.g_history[-patience:]
        if len(self.g_history) > patience and max(recent) == min(recent):
            self._stop = f"no new global best for {patience} steps"
        elif self.step > self.settings.max_steps:
            self._stop = f"max steps ({self.settings.max_steps}) reached"

    def stop_reason(self) -> str | None:
        return self._stop

    def _record(self, f: np.ndarray, new_best: bool) -> dict[str, Any]:
        """One JSON-able step record: the plot and card read these."""
        assert self.g is not None
        centre = self.x.mean(axis=0)
        return {
            "step": self.step,
            "fitness": [float(v) for v in f],
            "best_fitness": self.g_fit,
            "new_best": new_best,
            "global_best_alpha": [float(v) for v in self.g],
            "mean_alpha": [float(v) for v in centre],
            # Swarm spread: RMS distance of the particles to their centre, in α space.
            "spread": float(np.sqrt(((self.x - centre) ** 2).sum(axis=1).mean())),
            "step_length": self.step_length,
            "restarts": self.restarts,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "population": self.size,
            "steps": self.step,
            "evaluations": self.evaluations,
            "best_fitness": None if self.g is None else self.g_fit,
            "best_alpha": None if self.g is None else [float(v) for v in self.g],
            "restarts": self.restarts,
            "stop_reason": self._stop,
            "history": self.history,
        }


def position_recipe(
    space: str, base: str, sources: list[str], alpha: np.ndarray | list[float]
) -> MergeRecipe:
    """A particle as a merge recipe: its tensors are exactly the paper's position ``Σ α_j x_j``.

    Dense: ``task_arithmetic`` on the base with weight α_j per task vector and no normalising,
    i.e. ``base + Σ α_j (x_j − base) = Σ α_j x_j`` since ``Σ α_j = 1`` (LoRA experts are
    densified per tensor by the engine). Adapter: ``lora_factor_sum``, ``A = Σ α_j A_j`` and
    ``B = Σ α_j B_j``. The α are stored at full precision so the recipe hash is a replay key.
    """
    weights = [float(a) for a in alpha]
    if space == "adapter":
        return factor_recipe(base, sources, weights)
    if space != "dense":
        raise ConfigError(f"Swarm space {space!r} is not one of {', '.join(SPACES)}.")
    return MergeRecipe(
        method="task_arithmetic",
        base=base,
        models=[
            ModelEntry(model=s, parameters={"weight": w})
            for s, w in zip(sources, weights, strict=True)
        ],
        parameters={"normalize": False},
    )
