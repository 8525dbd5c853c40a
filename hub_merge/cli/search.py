"""``hub-merge search --strategy NAME``: a merge search into a resumable run folder.

Shared options are declared here once; each strategy's own options are made from its settings
dataclass (``Strategy.settings_type``): one option per field, its default and help read from the
field, so a new strategy's settings reach the CLI without editing this file. An option another
strategy owns is refused in one line before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import click

from ._hubopts import endpoint_option, token_option


class ManyValues(click.Option):
    """An option taking every following word up to the next option: ``--experts a b c``.

    click has no native "nargs=+" for options; :class:`ManyValuesCommand` spells such words as
    repeats of the option (``--experts a --experts b --experts c``) before click parses them,
    which keeps the familiar argparse spelling while ``--experts a --experts b`` still works.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)


class ManyValuesCommand(click.Command):
    """A command whose :class:`ManyValues` options take several words after one flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        many = {o for p in self.params if isinstance(p, ManyValues) for o in p.opts}
        return super().parse_args(ctx, spread_values(args, many))


def spread_values(args: list[str], flags: set[str]) -> list[str]:
    """``--flag a b`` -> ``--flag a --flag b`` for each of ``flags``, up to the next option."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        out.append(word)
        if word == "--":  # everything after is positional
            out.extend(args[i:])
            break
        flag = word.split("=", 1)[0]
        if flag not in flags:
            continue
        if "=" not in word and i < len(args):  # the flag's own value, whatever it looks like
            out.append(args[i])
            i += 1
        while i < len(args) and not args[i].startswith("-"):
            out += [flag, args[i]]
            i += 1
    return out


def parse_json(flag: str, text: str) -> Any:
    """``text`` as JSON, or a one-line ConfigError naming ``flag`` (every command's JSON flags)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        from ..errors import ConfigError

        raise ConfigError(f"{flag} is not valid JSON ({err.msg}): {text!r}") from None


def _number_or_word(flag: str, text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _strategy_options() -> tuple[list[click.Option], dict[str, dict[str, Any]]]:
    """One click option per settings field of every strategy (fields shared by name merge)."""
    from ..search.strategy import load_strategies

    options: list[click.Option] = []
    fields: dict[str, dict[str, Any]] = {}  # field name -> {"owners", "flag", "parse"}
    for sname, cls in sorted(load_strategies().items()):
        hints = typing.get_type_hints(cls.settings_type)
        for f in dataclasses.fields(cls.settings_type):
            if f.name in fields:
                fields[f.name]["owners"].append(sname)
                continue
            hint = hints[f.name]
            args = set(typing.get_args(hint)) or {hint}
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            parse = None
            kw: dict[str, Any] = {"default": None}
            if bool in args:
                flag = f.metadata.get("flag", f"{flag}/--no-{f.name.replace('_', '-')}")
            elif args <= {int, type(None)}:
                kw["type"] = int
            elif args <= {float, int, type(None)}:
                kw["type"] = float
            elif args & {dict, list} or any(typing.get_origin(a) in (dict, list) for a in args):
                parse = parse_json
            elif str in args and (float in args or int in args):
                parse = _number_or_word
            shown = json.dumps(default) if isinstance(default, (dict, list)) else default
            if isinstance(shown, str) and len(shown) > 40:
                shown = "see docs"
            kw["help"] = f"{help_text} [{sname}; default: {shown}]"
            options.append(click.Option([flag, f.name], **kw))
            fields[f.name] = {"owners": [sname], "flag": flag.split("/")[0], "parse": parse}
    return options, fields


_OPTIONS, _FIELDS = _strategy_options()


def _with_strategy_options(fn: Any) -> Any:
    for option in reversed(_OPTIONS):
        fn.__click_params__ = [*getattr(fn, "__click_params__", []), option]
    return fn


def _strategy_names() -> list[str]:
    from ..search.strategy import strategy_names

    return strategy_names()


@click.command(name="search", cls=ManyValuesCommand)
@click.option(
    "--strategy",
    default="greedy",
    show_default=True,
    help=f"How to search: {', '.join(_strategy_names())}.",
)
@click.option(
    "--base", required=True, help="Base model all experts share (Hub ref org/name[@rev] or folder)."
)
@click.option("--experts", cls=ManyValues, help="Expert models or LoRA adapters (two or more).")
@click.option(
    "--discover",
    "discover_n",
    type=int,
    default=None,
    help="Also take the N most-downloaded fine-tunes/adapters of --base from the Hub model tree.",
)
@click.option(
    "--tasks",
    cls=ManyValues,
    required=True,
    help="Task JSONL files (prompt, answer[, choices]), or lm-eval tasks: lm-eval:NAME[,NAME].",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder (state, plots, winner).",
)
@click.option(
    "--budget",
    type=int,
    default=None,
    help="Evaluations in the whole run, baselines included (default: the strategy's own stop).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")
@click.option(
    "--split-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the dev/test split alone (runs with other --seed share their test rows).",
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
    "--combine",
    type=click.Choice(["mean", "harmonic"]),
    default="mean",
    show_default=True,
    help="Tasks -> fitness: mean, or harmonic (favours balance; a loss enters as exp(-loss)).",
)
@click.option(
    "--limit", type=int, default=None, help="Score only the first N examples of each task."
)
@click.option(
    "--test-fraction",
    type=float,
    default=0.3,
    show_default=True,
    help="Share of each task's rows held out as test (by a hash of the prompt); the search "
    "optimises the rest (dev) and reports test scores for the winner and the baselines.",
)
@click.option(
    "--test-tasks",
    cls=ManyValues,
    help="Test JSONL files (or lm-eval:NAME tasks) instead, one per task (same order); never "
    "read by the search.",
)
@click.option(
    "--lm-eval-include",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder of lm-eval task YAMLs for --tasks lm-eval:NAME (local tasks, offline).",
)
@click.option(
    "--train-tasks",
    cls=ManyValues,
    help="Training JSONL files, one per task, named like it: rows that strategies which train "
    "(dam) learn from instead of the dev rows. Must share no prompt with the test rows.",
)
@click.option(
    "--allow-benchmark-fitness",
    is_flag=True,
    help="Allow task files named like public benchmarks (gsm8k, mmlu...) as the fitness.",
)
@click.option(
    "--batch-size",
    default="16",
    show_default=True,
    callback=lambda _c, _p, v: v if v == "auto" else _positive_int("--batch-size", v),
    help="Rows per forward pass, or auto (from free GPU memory; 16 on CPU).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option(
    "--max-memory",
    help="Memory the cache of merged models may use (e.g. 3GB, 512MB); default: a quarter of "
    "the free memory. Evicted merges are rebuilt from their inputs when needed.",
)
@click.option(
    "--workers",
    type=int,
    help="Score each generation's candidates on N local Ray workers, each pinned to its own "
    "cores or GPU (needs hub-merge[distributed]).",
)
@click.option(
    "--ray-address",
    help="Score on the Ray cluster at this address (host:port or ray://host:port).",
)
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
@_with_strategy_options
def command(
    strategy: str,
    base: str,
    experts: tuple[str, ...],
    discover_n: int | None,
    tasks: tuple[str, ...],
    out: str,
    budget: int | None,
    seed: int,
    split_seed: int,
    kinship_metric: str,
    metric: str,
    combine: str,
    limit: int | None,
    test_fraction: float,
    test_tasks: tuple[str, ...],
    train_tasks: tuple[str, ...],
    allow_benchmark_fitness: bool,
    lm_eval_include: str | None,
    batch_size: int | str,
    device: str,
    max_memory: str | None,
    workers: int | None,
    ray_address: str | None,
    resume: bool,
    save_nodes: tuple[str, ...],
    no_progress: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
    **strategy_values: Any,
) -> None:
    """Search for the best merge of EXPERTS with a search strategy (default: greedy).

    Every run first scores the baselines (each expert and their uniform average), which stay
    candidates, then runs the strategy. greedy: generation 1 merges every pair of experts; each
    later generation merges the top-k pairwise and (kinship-guided) the best with its least
    related model. The run folder keeps the state after every generation (Ctrl-C is safe;
    --resume continues), family_tree.json, fitness.png, family_tree.png and the winner as a
    model folder (RUN/winner). Options marked with a strategy's name belong to that strategy.

    \b
    Examples:
      hub-merge search --base org/base --experts org/a org/b org/c \\
          --tasks math.jsonl code.jsonl --k 3 --generations 5 --out run --limit 64
      hub-merge search ... --out run --resume
      hub-merge search --base org/base --discover 6 --tasks t.jsonl --out run --no-kinship
    """
    from ..errors import ConfigError
    from ..search import SearchConfig, get_strategy, search

    get_strategy(strategy)  # an unknown name: one line listing the strategies
    settings: dict[str, Any] = {}
    for name, value in strategy_values.items():
        if value is None:
            continue
        spec = _FIELDS[name]
        if strategy not in spec["owners"]:
            raise ConfigError(
                f"{spec['flag']} is a setting of strategy {', '.join(spec['owners'])}, "
                f"not of --strategy {strategy}."
            )
        settings[name] = spec["parse"](spec["flag"], value) if spec["parse"] else value
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
    from ..search.settings import check_expert_count

    check_expert_count(len(expert_refs), "give them with --experts, or find them with --discover N")
    config = SearchConfig(
        base=base,
        experts=expert_refs,
        tasks=list(tasks),
        out=out,
        strategy=strategy,
        settings=settings,
        budget=budget,
        seed=seed,
        split_seed=split_seed,
        kinship_metric=kinship_metric,
        metric=metric,
        combine=combine,
        limit=limit,
        test_fraction=test_fraction,
        test_tasks=list(test_tasks),
        train_tasks=list(train_tasks),
        allow_benchmark_fitness=allow_benchmark_fitness,
        lm_eval_include=lm_eval_include,
        batch_size=batch_size,
        device=device,
        max_memory=max_memory,
        workers=workers,
        ray_address=ray_address,
        resume=resume,
        progress=not no_progress and not as_json,
        materialize=["winner", *save_nodes],
        endpoint=endpoint,
        token=token,
    )
    config.strategy_settings()  # a bad setting fails here, before any download
    if not test_tasks and not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"--test-fraction must be between 0 and 1 (exclusive); got {test_fraction}."
        )
    try:
        result = search(config)
    except KeyboardInterrupt:
        click.echo(
            f"Interrupted; state saved in {out}. Continue with the same command and --resume.",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    echo_summary(result, out)


def echo_summary(result: Any, out: str) -> None:
    """The winner against the baselines (``hub_merge.comparison``): test rows, and dev beside."""
    from ..comparison import compare, format_score

    cmp = compare(result.tree)
    node = result.winner_node
    click.echo(
        f"Winner ({result.strategy}): {node.id} after {result.generations} generation(s): "
        f"{result.stop_reason}."
    )
    split = cmp.split
    combined = f"{split} {cmp.combined_label}"
    click.echo(
        f"{cmp.metric} per task and {cmp.combined_label} of the tasks ({cmp.direction} is better):"
    )
    width = max(16, len(combined) + 1)
    click.echo(
        f"{'model':<24} {'dev ' + cmp.combined_label:>{width}} {combined:>{width}}  "
        f"per task ({split})"
    )
    for row in cmp.shown("dev"):
        scores = row.scores(split)
        per_task = " ".join(f"{t}={format_score(scores[t])}" for t in cmp.tasks if t in scores)
        mark = "*" if row.subject else " "
        click.echo(
            f"{mark}{row.label:<23} {format_score(row.dev_combined):>{width}} "
            f"{format_score(row.combined(split)):>{width}}  {per_task}"
        )
    if cmp.split_description:
        click.echo(f"Test rows: {cmp.split_description}.")
    click.echo(
        f"Evaluations: {result.evaluations} new, {result.cache_hits} from cache. "
        f"Run folder: {out} (winner in {result.winner_path})."
    )


def _positive_int(flag: str, value: str) -> int:
    if not str(value).isdigit() or int(value) < 1:
        raise click.BadParameter(f"{flag} takes a positive number or auto; got {value!r}.")
    return int(value)
