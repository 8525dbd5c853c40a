"""``hub-merge search``: kinship-guided top-k greedy merging into a resumable run folder."""

from __future__ import annotations

import json
from typing import Any

import click

from ._hubopts import endpoint_option, token_option


class _ManyValues(click.Option):
    """An option taking every following word up to the next option: ``--experts a b c``.

    click has no native "nargs=+" for options; this keeps the familiar argparse spelling while
    ``--experts a --experts b`` still works.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> Any:
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            original = opt.process

            def process(value: Any, state: Any, _original=original) -> None:
                _original(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    _original(state.rargs.pop(0), state)

            opt.process = process
            break
        return result


@click.command(name="search")
@click.option(
    "--base", required=True, help="Base model all experts share (Hub ref org/name[@rev] or folder)."
)
@click.option("--experts", cls=_ManyValues, help="Expert models or LoRA adapters (two or more).")
@click.option(
    "--discover",
    "discover_n",
    type=int,
    default=None,
    help="Also take the N most-downloaded fine-tunes/adapters of --base from the Hub model tree.",
)
@click.option(
    "--tasks", cls=_ManyValues, required=True, help="Task JSONL files (prompt, answer[, choices])."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder (state, plots, winner).",
)
@click.option(
    "--k", default=3, show_default=True, help="How many of the fittest models are merged pairwise."
)
@click.option("--generations", default=5, show_default=True, help="Maximum generations.")
@click.option(
    "--method",
    default="slerp",
    show_default=True,
    help="Merge method of each pairwise step (default: the paper's layer-wise SLERP).",
)
@click.option(
    "--parameters",
    "parameters_json",
    default=None,
    help="Method parameters as JSON, e.g. '{\"t\": 0.5}' (default for slerp: the paper's t schedule).",
)
@click.option(
    "--no-kinship",
    is_flag=True,
    help="Vanilla greedy: no kinship-guided exploration, no kinship stop.",
)
@click.option(
    "--patience",
    default=2,
    show_default=True,
    help="Stop after this many generations without improvement.",
)
@click.option(
    "--kinship-stop",
    default=0.9,
    show_default=True,
    help="Stop when mean kinship among the top-k exceeds this (Pearson).",
)
@click.option(
    "--kinship-metric",
    type=click.Choice(["pearson", "cosine", "euclidean"]),
    default="pearson",
    show_default=True,
)
@click.option(
    "--metric",
    type=click.Choice(["answer_loss", "exact_match", "choice"]),
    default="answer_loss",
    show_default=True,
    help="Task score; fitness is higher-is-better (a loss is negated).",
)
@click.option(
    "--limit", type=int, default=None, help="Score only the first N examples of each task."
)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out without re-evaluating anything."
)
@click.option(
    "--save-node",
    "save_nodes",
    multiple=True,
    help="Also write this node (e.g. g2-1) as a model folder to RUN/nodes/<id>; repeatable.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@endpoint_option
@token_option
def command(
    base: str,
    experts: tuple[str, ...],
    discover_n: int | None,
    tasks: tuple[str, ...],
    out: str,
    k: int,
    generations: int,
    method: str,
    parameters_json: str | None,
    no_kinship: bool,
    patience: int,
    kinship_stop: float,
    kinship_metric: str,
    metric: str,
    limit: int | None,
    batch_size: int,
    device: str,
    resume: bool,
    save_nodes: tuple[str, ...],
    no_progress: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Search for the best merge of EXPERTS by kinship-guided top-k greedy merging.

    Generation 1 merges every pair of experts; each later generation merges the top-k pairwise
    and (kinship-guided) the best with its least related model in the pool. The run folder keeps
    the state after every generation (Ctrl-C is safe; --resume continues), family_tree.json,
    fitness.png, family_tree.png and the winner as a model folder (RUN/winner).

    \b
    Examples:
      hub-merge search --base org/base --experts org/a org/b org/c \\
          --tasks math.jsonl code.jsonl --k 3 --generations 5 --out run --limit 64
      hub-merge search ... --out run --resume
      hub-merge search --base org/base --discover 6 --tasks t.jsonl --out run --no-kinship
    """
    from ..errors import ConfigError
    from ..search import SearchConfig, greedy_search

    expert_refs = list(experts)
    if discover_n:
        from .. import hub

        found = hub.discover(
            base,
            ("finetune", "adapter"),
            limit=discover_n,
            safetensors_only=True,
            endpoint=endpoint,
            token=token,
        )
        expert_refs += [c.id for c in found if c.id not in expert_refs]
    if len(expert_refs) < 2:
        raise ConfigError(
            "Give at least two experts with --experts (or find them with --discover N)."
        )
    parameters = None
    if parameters_json:
        try:
            parameters = json.loads(parameters_json)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"--parameters is not valid JSON ({err.msg}): {parameters_json!r}"
            ) from None
        if not isinstance(parameters, dict):
            raise ConfigError("--parameters must be a JSON object, e.g. '{\"t\": 0.5}'.")
    config = SearchConfig(
        base=base,
        experts=expert_refs,
        tasks=list(tasks),
        out=out,
        k=k,
        generations=generations,
        method=method,
        parameters=parameters,
        kinship_guided=not no_kinship,
        kinship_stop=None if no_kinship else kinship_stop,
        kinship_metric=kinship_metric,
        patience=patience,
        metric=metric,
        limit=limit,
        batch_size=batch_size,
        device=device,
        resume=resume,
        progress=not no_progress and not as_json,
        materialize=["winner", *save_nodes],
        endpoint=endpoint,
        token=token,
    )
    try:
        result = greedy_search(config)
    except KeyboardInterrupt:
        click.echo(
            f"Interrupted; state saved in {out}. Continue with the same command and --resume.",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    node = result.winner_node
    click.echo(
        f"Winner: {node.id} (fitness {node.fitness:.4g}) after {result.generations} generation(s): "
        f"{result.stop_reason}."
    )
    for task, value in node.scores.items():
        click.echo(f"  {task}: {value:.4g}")
    click.echo(
        f"Evaluations: {result.evaluations} new, {result.cache_hits} from cache. "
        f"Run folder: {out} (winner in {result.winner_path})."
    )
