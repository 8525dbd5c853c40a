"""Fitness of a model on the user's tasks: small labelled JSONL sets scored in memory, batched.

A search scores hundreds of candidates, so everything here works on an in-memory transformers
model (a merged candidate is never written to disk to be scored) and every score is cached by a
hash of the candidate's recipe, so nothing is evaluated twice, even across a resumed run.

Metrics (``Metric``):
- ``answer_loss``: mean cross-entropy over the answer tokens plus EOS given the prompt. Graded and
  cheap, so it is the default for small models, where exact match is all-or-nothing.
- ``exact_match``: greedy generation compared with the answer (whitespace-stripped).
- ``choice``: multiple choice by log-likelihood: the choice whose tokens are most likely wins.

Fitness is always higher-is-better: the (weighted) mean of the per-task scores, negated for a
loss. The raw per-task values are kept beside it (``scores``) so cards can show real numbers.

We hand-write the scoring loop instead of using lm-eval: it would pull in a large dependency to
run three small loops, and it scores models from disk, which a search must avoid.

Layout: ``tasks`` (task files), ``fitness`` (metrics, combining scores), ``cache`` (the score
cache) and ``scoring`` (the :class:`Evaluator`).
"""

from __future__ import annotations

from .cache import ScoreCache
from .fitness import COMBINES, LOWER_IS_BETTER, METRICS, Metric, fitness_from_scores
from .scoring import Evaluator
from .tasks import Example, Task, load_task, load_tasks

__all__ = [
    "COMBINES",
    "LOWER_IS_BETTER",
    "METRICS",
    "Evaluator",
    "Example",
    "Metric",
    "ScoreCache",
    "Task",
    "fitness_from_scores",
    "load_task",
    "load_tasks",
]
