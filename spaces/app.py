"""hub-merge as a Gradio Space: discover → kinship → search → card → push, without a terminal.

A thin UI over the hub-merge Python API (``hub_merge.hub``, ``.kinship``, ``.search``, ``.card``,
``.publish``): this file lays out the page and starts the server; the event handlers live in
``handlers.py``, session bookkeeping in ``workflow.py`` and the caps on each visitor's work in
``space_limits.py`` (``HUB_MERGE_SPACE_*`` variables), all beside this file.

Run it:
    python spaces/app.py                 # against HF_ENDPOINT, or the public Hub
    python spaces/app.py --local-hub     # demo: a local Hub seeded with the tiny zoo

On a Space (``hf_oauth: true`` in README.md) users sign in with Hugging Face and pushes use their
OAuth token; run locally, a password field takes a token instead. Tokens are never stored: each
call gets the caller's own token from its own request.
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `handlers`, `workflow` beside this file

from handlers import RELATIONS, build_handlers  # noqa: E402
from handlers import user_token as user_token  # noqa: E402 - the tests check it here
from space_limits import SpaceLimits  # noqa: E402
from workflow import close_session, strategy_defaults  # noqa: E402

from hub_merge.search.strategy import strategy_names  # noqa: E402

METHODS = ["slerp", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
SESSION_TTL = SpaceLimits.session_ttl_seconds  # default idle time before a tab's folder goes
# Token of the user that owns the tiny zoo on a `--local-hub` demo, and of the demo user.
ZOO_TOKEN = "hf_hubmergezoo_local_write"
DEMO_USER, DEMO_TOKEN = "demo", "hf_demo_local_write"


def _task_inputs(prefix: str) -> tuple[gr.CheckboxGroup, gr.Slider, gr.File]:
    """One row of task inputs (built-in tasks, examples per task, JSONL uploads) for a tab."""
    from hub_merge.zoo import TASKS

    with gr.Row():
        builtin = gr.CheckboxGroup(list(TASKS), label="Built-in tasks", elem_id=f"{prefix}builtin")
        n_examples = gr.Slider(8, 256, value=32, step=8, label="Examples per built-in task")
        uploads = gr.File(
            label="…or upload JSONL tasks ({prompt, answer} per line)",
            file_count="multiple",
            file_types=[".jsonl"],
        )
    return builtin, n_examples, uploads


def on_oauth_space() -> bool:
    """True on a Space with ``hf_oauth: true`` (the Hub then sets OAUTH_CLIENT_ID)."""
    return bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))


# --- layout -------------------------------------------------------------------------------------


def build_demo(
    endpoint: str | None = None,
    *,
    default_base: str = "",
    work_dir: str | Path | None = None,
    limits: SpaceLimits | None = None,
) -> gr.Blocks:
    """The Space's Blocks, talking to ``endpoint`` (default: HF_ENDPOINT or the public Hub).

    Each browser tab gets its own folder under ``work_dir`` (default: the system temp dir),
    deleted when the tab closes or after ``limits.session_ttl_seconds`` without activity.
    ``limits`` caps each visitor's work (default: ``SpaceLimits.from_env()``, i.e. the safe
    defaults, each overridable by a ``HUB_MERGE_SPACE_<NAME>`` environment variable).
    """
    from hub_merge.hub import resolve_endpoint

    limits = limits or SpaceLimits.from_env()
    h = build_handlers(endpoint, work_dir, limits)
    oauth = on_oauth_space()
    with gr.Blocks(title="hub-merge") as demo:
        state = gr.State(
            None, time_to_live=limits.session_ttl_seconds, delete_callback=close_session
        )
        gr.Markdown(
            "# hub-merge\nMerge models of one family: find a base model's fine-tunes and "
            "adapters, see how related they are, let a kinship-guided greedy search merge them "
            "(or compare every strategy on a leaderboard, in the Compare tab), and publish the "
            f"merge with its lineage. Hub: `{resolve_endpoint(endpoint)}`"
        )
        with gr.Row():
            if oauth:
                gr.LoginButton()
            token = gr.Textbox(
                label="Hugging Face token (needed to push; never stored)",
                type="password",
                visible=not oauth,
                elem_id="token",
            )

        gr.Markdown("## 1. Base model and candidates")
        with gr.Row():
            base = gr.Textbox(label="Base model", value=default_base, elem_id="base", scale=3)
            relations = gr.CheckboxGroup(
                RELATIONS, value=RELATIONS, label="Relations", scale=2, elem_id="relations"
            )
            limit_found = gr.Number(value=20, label="Max candidates", precision=0, scale=1)
        discover_btn = gr.Button("Discover through the model tree", elem_id="discover")
        found_note = gr.Markdown()
        found = gr.Dataframe(
            headers=["model", "relation", "downloads", "likes", "license", "size"],
            interactive=False,
            label="Candidates",
        )
        chosen = gr.CheckboxGroup([], label="Candidates to merge", elem_id="chosen")
        pasted = gr.Textbox(label="…or paste model ids, one per line", lines=2)

        with gr.Tabs():
            with gr.Tab("Kinship and search", elem_id="search-tab"):
                gr.Markdown("## 2. Kinship")
                kinship_btn = gr.Button("Measure kinship", elem_id="kinship")
                with gr.Row():
                    heatmap = gr.Image(label="Kinship heatmap", type="filepath", elem_id="heatmap")
                    kin_table = gr.Dataframe(label="Kinship (Pearson)", interactive=False)

                gr.Markdown("## 3. Search")
                builtin, n_examples, uploads = _task_inputs("")
                with gr.Row():
                    strategy = gr.Dropdown(
                        strategy_names(),
                        value="greedy",
                        label="Search strategy",
                        elem_id="strategy",
                        info="greedy: Hu et al. 2024; evolve: CMA-ES, Akiba et al. 2024; "
                        "swarm: Model Swarms, Feng et al. 2024",
                    )
                    budget = gr.Number(
                        value=0,
                        label="Budget (evaluations, baselines included; 0: the strategy's own stop)",
                        precision=0,
                        elem_id="budget",
                    )
                with gr.Row(visible=True) as greedy_row:
                    k = gr.Slider(
                        2, 6, value=3, step=1, label="k (top models merged pairwise)", elem_id="k"
                    )
                    generations = gr.Slider(
                        1, 10, value=3, step=1, label="Generations", elem_id="generations"
                    )
                    method = gr.Dropdown(
                        METHODS, value="slerp", label="Merge method", elem_id="method"
                    )
                with gr.Row():
                    settings_json = gr.Code(
                        strategy_defaults("greedy"),
                        language="json",
                        label="The strategy's other settings (JSON, its defaults shown)",
                        elem_id="settings",
                    )
                    limit = gr.Number(
                        value=None,
                        label="Examples per task (blank: all)",
                        precision=0,
                        elem_id="limit",
                    )
                with gr.Row():
                    run_btn = gr.Button("Run search", variant="primary", elem_id="run")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Markdown(elem_id="status")
                gen_table = gr.Dataframe(
                    headers=["generation", "best fitness", "best", "top-k kinship"],
                    interactive=False,
                    label="Generations",
                )
                baselines = gr.Dataframe(
                    headers=[
                        "model",
                        "dev (tasks combined)",
                        "test (tasks combined)",
                        "test per task",
                    ],
                    interactive=False,
                    label="Winner against the baselines (each expert, the uniform average, the oracle router)",
                    elem_id="baselines",
                )
                with gr.Row():
                    fitness = gr.Image(label="Fitness by generation", type="filepath")
                    tree = gr.Image(label="Family tree", type="filepath")

                gr.Markdown("## 4. Card and push")
                with gr.Row():
                    repo_id = gr.Textbox(label="Repo id (name, or namespace/name)", elem_id="repo")
                    license = gr.Textbox(
                        label="License (when the parents' licenses do not decide it)"
                    )
                    private = gr.Checkbox(label="Private")
                with gr.Row():
                    preview_btn = gr.Button("Preview card")
                    push_btn = gr.Button("Push to the Hub", variant="primary", elem_id="push")
                pushed = gr.Markdown(elem_id="pushed")
                pushed_url = gr.Textbox(
                    label="Pushed repo", interactive=False, elem_id="pushed-url"
                )
                with gr.Accordion("Model card preview", open=False):
                    card = gr.Markdown(elem_id="card")
            with gr.Tab("Compare", elem_id="compare-tab"):
                gr.Markdown(
                    "Every strategy on the candidates above and your tasks, side by side: one "
                    "dev/test split, one set of baselines (each candidate, the uniform average, "
                    "the oracle router), one score cache. The recommended row is chosen on the "
                    "dev rows, never on the test rows; push any row that is one model. "
                    "DAM trains on the dev rows the searches read, so the rows stay comparable."
                )
                cmp_builtin, cmp_n_examples, cmp_uploads = _task_inputs("cmp-")
                with gr.Row():
                    cmp_strategies = gr.CheckboxGroup(
                        strategy_names(),
                        value=[n for n in ("greedy", "dam") if n in strategy_names()],
                        label=f"Strategies (at most {limits.max_strategies})",
                        elem_id="cmp-strategies",
                    )
                    cmp_budget = gr.Number(
                        value=0,
                        label=f"Budget: evaluations shared by the strategies (0: this Space's "
                        f"cap, {limits.max_budget})",
                        precision=0,
                        elem_id="cmp-budget",
                    )
                    cmp_limit = gr.Number(
                        value=None,
                        label="Examples per task (blank: all)",
                        precision=0,
                        elem_id="cmp-limit",
                    )
                cmp_settings = gr.Code(
                    '{"greedy": {"generations": 2}, "dam": {"steps": 30}}',
                    language="json",
                    label='Each strategy\'s own settings (JSON: {"strategy": {"setting": value}})',
                    elem_id="cmp-settings",
                )
                with gr.Row():
                    cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                    cmp_cancel = gr.Button("Cancel", variant="stop", elem_id="cmp-cancel")
                cmp_status = gr.Markdown(elem_id="cmp-status")
                cmp_table = gr.Dataframe(
                    headers=["row"],
                    interactive=False,
                    label="Leaderboard (test rows; the recommended row chosen on dev)",
                    elem_id="leaderboard",
                )
                cmp_notes = gr.Markdown(elem_id="cmp-notes")
                cmp_plot = gr.Image(label="Test score against cost", type="filepath")
                with gr.Row():
                    cmp_repo = gr.Textbox(
                        label="Repo id (name, or namespace/name)", elem_id="cmp-repo"
                    )
                    cmp_license = gr.Textbox(
                        label="License (when the parents' licenses do not decide it)"
                    )
                    cmp_private = gr.Checkbox(label="Private")
                cmp_rows = gr.State([])  # the rows that are one model, recommended first
                cmp_row = gr.Textbox(visible=False, elem_id="cmp-row")  # the API's row name
                cmp_pushed = gr.Markdown(elem_id="cmp-pushed")
                cmp_url = gr.Textbox(label="Pushed repo", interactive=False, elem_id="cmp-url")

                @gr.render(inputs=[cmp_rows])
                def _push_buttons(rows: list[str]) -> None:
                    """One Push button per publishable row (the first is the recommended one)."""
                    with gr.Row():
                        for i, name in enumerate(rows or []):
                            button = gr.Button(
                                f"Push {name}" + (" (recommended)" if i == 0 else ""),
                                variant="primary" if i == 0 else "secondary",
                                key=f"push-{name}",
                            )
                            button.click(
                                h["push_row"],
                                [state, gr.State(name), cmp_repo, cmp_license, cmp_private, token],
                                [state, cmp_pushed, cmp_url],
                                api_visibility="private",
                            )

        discover_btn.click(
            h["discover"],
            [state, base, relations, limit_found, token],
            [state, found, chosen, found_note],
            api_name="discover",
        )
        kinship_btn.click(
            h["kinship"],
            [state, base, chosen, pasted, token],
            [state, heatmap, kin_table],
            api_name="kinship",
        )
        run_event = run_btn.click(
            h["search"],
            [state, base, chosen, pasted, builtin, n_examples, uploads, k, generations, method]
            + [limit, repo_id, license, token, strategy, settings_json, budget],
            [state, status, gen_table, fitness, tree, card, baselines],
            api_name="search",
            concurrency_limit=1,  # one search at a time per replica: it uses every core
            concurrency_id="search",
        )
        strategy.change(
            lambda name: (strategy_defaults(name or "greedy"), gr.Row(visible=name == "greedy")),
            [strategy],
            [settings_json, greedy_row],
        )
        cancel_btn.click(h["cancel"], [state], [status], cancels=[run_event], api_name="cancel")
        compare_event = cmp_btn.click(
            h["compare"],
            [state, base, chosen, pasted, cmp_builtin, cmp_n_examples, cmp_uploads]
            + [cmp_strategies, cmp_budget, cmp_settings, cmp_limit, token],
            [state, cmp_status, cmp_table, cmp_plot, cmp_notes, cmp_rows],
            api_name="compare",
            concurrency_limit=1,  # as a search: it uses every core
            concurrency_id="search",  # one search or compare at a time per replica
        )
        cmp_cancel.click(
            h["cancel_compare"],
            [state],
            [cmp_status],
            cancels=[compare_event],
            api_name="cancel_compare",
        )
        # The API's push of a named row (the page's buttons call the same handler).
        cmp_row.submit(
            h["push_row"],
            [state, cmp_row, cmp_repo, cmp_license, cmp_private, token],
            [state, cmp_pushed, cmp_url],
            api_name="push_row",
        )
        preview_btn.click(h["preview"], [state, repo_id, license], [card], api_name="preview")
        push_btn.click(
            h["push"],
            [state, repo_id, license, private, token],
            [state, pushed, pushed_url],
            api_name="push",
        )
    demo.queue(default_concurrency_limit=4)
    return demo


# --- the local-Hub demo ------------------------------------------------------------------------


def seed_local_hub(endpoint: str) -> str:
    """Upload the tiny zoo to a local Hub; returns the base model's repo id."""
    from hub_merge.zoo import build_tiny_zoo, upload_zoo

    zoo = build_tiny_zoo()
    return upload_zoo(zoo, endpoint=endpoint, token=ZOO_TOKEN).base


def local_hub_tokens() -> dict[str, tuple[str, str]]:
    return {ZOO_TOKEN: ("hub-merge-zoo", "write"), DEMO_TOKEN: (DEMO_USER, "write")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--local-hub",
        action="store_true",
        help="start a local Hub seeded with the tiny zoo and use it (a demo without the internet)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.local_hub:
        build_demo(os.environ.get("HF_ENDPOINT")).launch(
            server_name=args.host, server_port=args.port
        )
        return
    from hub_merge.localhub import LocalHub

    with tempfile.TemporaryDirectory(prefix="hub-merge-local-hub-") as data:
        with LocalHub(Path(data), tokens=local_hub_tokens()) as local:
            print(f"Local Hub at {local.endpoint}; seeding it with the tiny zoo…", flush=True)
            base = seed_local_hub(local.endpoint)
            print(
                f"Local Hub ready at {local.endpoint} (base model {base}). "
                f"Push as user {DEMO_USER!r} with token {DEMO_TOKEN} (valid on this local Hub only).",
                flush=True,
            )
            build_demo(local.endpoint, default_base=base).launch(
                server_name=args.host, server_port=args.port
            )


if __name__ == "__main__":
    main()
