"""hub-merge as a Gradio Space: discover → kinship → search → card → push, without a terminal.

A thin UI over the hub-merge Python API (``hub_merge.hub``, ``.kinship``, ``.search``, ``.card``,
``.publish``); session bookkeeping lives in ``workflow.py`` beside this file.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `workflow` beside this file

from workflow import (  # noqa: E402
    SearchRun,
    Session,
    baselines_table,
    close_session,
    generation_table,
    live_fitness_plot,
    merge_ids,
    parse_ids,
    strategy_defaults,
    strategy_settings,
    task_files,
)

from hub_merge.errors import HubMergeError  # noqa: E402
from hub_merge.refs import ModelRef, parse_hub_ref  # noqa: E402
from hub_merge.search.strategy import strategy_names  # noqa: E402

logger = logging.getLogger("hub_merge.space")

RELATIONS = ["finetune", "adapter", "merge"]
METHODS = ["slerp", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
POLL_SECONDS = 1.0
SESSION_TTL = 12 * 3600  # an abandoned tab's folder is deleted after this long idle
# Token of the user that owns the tiny zoo on a `--local-hub` demo, and of the demo user.
ZOO_TOKEN = "hf_hubmergezoo_local_write"
DEMO_USER, DEMO_TOKEN = "demo", "hf_demo_local_write"


def on_oauth_space() -> bool:
    """True on a Space with ``hf_oauth: true`` (the Hub then sets OAUTH_CLIENT_ID)."""
    return bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))


def user_token(typed: str | None, oauth: gr.OAuthToken | None) -> str | bool:
    """The caller's token, else False.

    False (not None) stops huggingface_hub from falling back to the server's own HF_TOKEN or
    login: an anonymous visitor must never act with the Space owner's rights.
    """
    if typed and typed.strip():
        return typed.strip()
    if oauth is not None and oauth.token:
        return oauth.token
    return False


def _user_error(err: BaseException, token: str | bool) -> gr.Error:
    from hub_merge.hub import scrub

    secret = token if isinstance(token, str) else None
    if isinstance(err, HubMergeError):
        return gr.Error(scrub(str(err), secret))
    logger.exception("unexpected error in the Space")
    return gr.Error(scrub(f"Unexpected error ({type(err).__name__}): {err}", secret))


def _experts(chosen: list[str] | None, pasted: str | None) -> list[str]:
    return merge_ids(chosen, parse_ids(pasted))


def hub_refs(base: str | None, experts: Sequence[str] = ()) -> tuple[ModelRef, list[ModelRef]]:
    """The base and candidates as Hub references, or a one-line refusal naming the field.

    The one gate between visitors and the disk: a Space takes Hub ids only (``org/name`` or
    ``org/name@revision``), and the references it returns are Hub references whatever folders
    exist on the server, so no later step can read, list, merge or push a server path.
    """
    try:
        base_ref = parse_hub_ref(base, what="base model")
        refs = [parse_hub_ref(e, what=f"candidate model #{i}") for i, e in enumerate(experts, 1)]
    except HubMergeError as err:
        raise gr.Error(str(err)) from None
    return base_ref, refs


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --- handlers (one per button; each gets only its own session and token) --------------------


def build_handlers(endpoint: str | None, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Event handlers bound to the server's Hub endpoint (not a user input: a user-chosen
    endpoint would make the server send requests, and tokens, wherever a visitor asked)."""
    from hub_merge import hub

    def _session(state: Session | None) -> Session:
        return state if isinstance(state, Session) else Session.create(work_dir)

    def discover(
        state: Session | None,
        base: str,
        relations: list[str],
        limit: float,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
    ):
        session = _session(state)
        token = user_token(token_text, oauth_token)
        if not (base or "").strip():
            raise gr.Error("Enter a base model id, e.g. org/name.")
        base_ref, _ = hub_refs(base)
        base = str(base_ref.repo_id)  # the model tree is per repo, whatever the revision
        try:
            found = hub.discover(
                base,
                relations or RELATIONS,
                limit=int(limit or 20),
                endpoint=endpoint,
                token=token,
            )
        except Exception as err:
            raise _user_error(err, token) from None
        session.base = base
        rows = [
            [c.id, c.relation, c.downloads, c.likes, c.license or "", _size(c.size)] for c in found
        ]
        ids = [c.id for c in found]
        note = (
            f"Found {len(ids)} model(s) derived from `{base}`. Untick any you do not want."
            if ids
            else f"No models on the Hub's model tree of `{base}`; paste ids below instead."
        )
        return session, rows, gr.CheckboxGroup(choices=ids, value=ids), note

    def kinship(
        state: Session | None,
        base: str,
        chosen: list[str],
        pasted: str,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ):
        from hub_merge.kinship import kinship_matrix
        from hub_merge.plots import plot_kinship

        session = _session(state)
        token = user_token(token_text, oauth_token)
        experts = _experts(chosen, pasted)
        if not (base or "").strip():
            raise gr.Error("Enter the base model first.")
        if len(experts) < 2:
            raise gr.Error("Pick or paste at least two candidate models to compare.")
        base_ref, refs = hub_refs(base, experts)
        try:
            progress(0, desc="pulling models")
            kw = {"endpoint": endpoint, "token": token, "cache_dir": session.cache_dir}
            base_model = hub.pull(base_ref, **kw)
            models = {str(ref): hub.pull(ref, **kw).path for ref in refs}
            progress(0.5, desc="measuring kinship")
            result = kinship_matrix(
                models, base_model.path, base_id=base_model.repo_id, progress=True
            )
            png = session.root / "kinship" / f"kinship-{len(os.listdir(session.root))}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            plot_kinship(result, png)
        except Exception as err:
            raise _user_error(err, token) from None
        session.base, session.experts = str(base_ref), [str(r) for r in refs]
        table = [
            [name, *(round(float(v), 4) for v in row)]
            for name, row in zip(result.names, result.matrix, strict=True)
        ]
        return session, str(png), gr.Dataframe(value=table, headers=["model", *result.names])

    def search(
        state: Session | None,
        base: str,
        chosen: list[str],
        pasted: str,
        builtin: list[str],
        n_examples: float,
        uploads: list[Any] | None,
        k: float,
        generations: float,
        method: str,
        limit: float | None,
        repo_id: str,
        license: str,
        token_text: str,
        strategy: str | None,
        settings_json: str | None,
        budget: float | None,
        oauth_token: gr.OAuthToken | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ):
        from hub_merge.search import SearchConfig

        session = _session(state)
        token = user_token(token_text, oauth_token)
        experts = _experts(chosen, pasted)
        if not (base or "").strip():
            raise gr.Error("Enter the base model first.")
        if len(experts) < 2:
            raise gr.Error("A search merges at least two candidates; pick or paste more.")
        if session.search is not None and session.search.running:
            raise gr.Error("A search is already running in this tab; cancel it first.")
        base_ref, refs = hub_refs(base, experts)
        try:
            strategy = strategy or "greedy"
            greedy = {"k": int(k), "generations": int(generations), "method": method}
            settings = strategy_settings(strategy, settings_json, greedy)
            SearchConfig(  # the strategy and its settings are checked before anything is made
                base=base_ref, experts=refs, tasks=[], out="", strategy=strategy, settings=settings
            ).strategy_settings()
            tasks = task_files(session, builtin, int(n_examples or 32), uploads)
            run_dir = session.new_run_dir()
            config = SearchConfig(
                base=base_ref,  # Hub references: the search never reads them as folders
                experts=refs,
                tasks=tasks,
                out=str(run_dir),
                strategy=strategy,
                settings=settings,
                budget=int(budget) if budget else None,
                limit=int(limit) if limit else None,
                progress=True,
                endpoint=endpoint,
                token=token,
                cache_dir=str(session.cache_dir),
            )
        except Exception as err:
            raise _user_error(err, token) from None
        run = session.search = SearchRun(config).start()
        progress(0, desc="pulling models and scoring the experts")
        shown = None
        try:
            while not run.wait(POLL_SECONDS):
                plot = live_fitness_plot(session, run_dir)
                if plot != shown and plot is not None:
                    shown = plot
                    rows = generation_table(run_dir)
                    done = f"generation {rows[-1][0]} done" if rows else "scoring"
                    yield session, f"Running: {done}.", rows, plot, None, "", []
        finally:
            # Gradio closes this generator when the user cancels or leaves: stop the search too.
            if run.running:
                run.cancel()
        if run.cancelled:
            rows = generation_table(run_dir)
            yield (
                session,
                "Cancelled. The run folder kept every finished generation.",
                rows,
                live_fitness_plot(session, run_dir),
                None,
                "",
                [],
            )
            return
        if run.error is not None:
            raise _user_error(run.error, token)
        result = run.result
        node = result.winner_node
        status = (
            f"**Done** ({result.strategy}: {result.stop_reason}). Winner `{result.winner}` with "
            f"dev fitness {node.fitness:.4f} after {result.generations} generation(s); the table "
            "sets it against the baselines on held-out test rows."
        )
        tree_png = run_dir / "family_tree.png"
        fitness_png = run_dir / "fitness.png"
        yield (
            session,
            status,
            generation_table(run_dir),
            str(fitness_png) if fitness_png.is_file() else shown,
            str(tree_png) if tree_png.is_file() else None,
            _card_text(run_dir, repo_id, license),
            baselines_table(run_dir),
        )

    def cancel(state: Session | None):
        if isinstance(state, Session) and state.search is not None and state.search.running:
            state.search.cancel()
            return "Cancelling: the search stops after saving its state…"
        return "Nothing is running."

    def preview(state: Session | None, repo_id: str, license: str):
        session = _session(state)
        if session.run_dir is None or not (session.run_dir / "family_tree.json").is_file():
            raise gr.Error("Run a search first; the card describes its winner.")
        return _card_text(session.run_dir, repo_id, license)

    def push(
        state: Session | None,
        repo_id: str,
        license: str,
        private: bool,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
    ):
        from hub_merge.publish import publish

        session = _session(state)
        token = user_token(token_text, oauth_token)
        if session.run_dir is None or not (session.run_dir / "family_tree.json").is_file():
            raise gr.Error("Run a search first; pushing publishes its winner.")
        if session.search is not None and session.search.running:
            raise gr.Error("The search is still running; wait for it or cancel it.")
        if not token:
            raise gr.Error(
                "Pushing needs your Hugging Face account: sign in (on the Space) or paste a "
                "token with write access."
            )
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise gr.Error("Enter the repo to create, e.g. your-name/my-merge.")
        try:
            if "/" not in repo_id:
                user = hub.get_api(endpoint, token).whoami()["name"]
                repo_id = f"{user}/{repo_id}"
            result = publish(
                session.run_dir,
                repo_id,
                license=(license or "").strip() or None,
                private=bool(private),
                endpoint=endpoint,
                token=token,
            )
        except Exception as err:
            raise _user_error(err, token) from None
        url = f"{hub.resolve_endpoint(endpoint).rstrip('/')}/{result.push.repo_id}"
        return (
            session,
            f"Pushed **{result.push.repo_id}** in commit `{result.push.commit_sha[:10]}`: "
            f"[{url}]({url})",
            url,
        )

    return {
        "discover": discover,
        "kinship": kinship,
        "search": search,
        "cancel": cancel,
        "preview": preview,
        "push": push,
    }


def _card_text(run_dir: Path, repo_id: str | None, license: str | None) -> str:
    """The card that a push would write, or why it cannot be written yet."""
    from hub_merge.card import build_card
    from hub_merge.lineage import FamilyTree

    try:
        tree = FamilyTree.load(run_dir / "family_tree.json")
        card = build_card(
            tree,
            repo_id=(repo_id or "").strip() or None,
            license=(license or "").strip() or None,
            images=[p.name for p in run_dir.glob("*.png")],
        )
    except HubMergeError as err:
        return f"**The card cannot be written yet:** {err}"
    return card.text


# --- layout -------------------------------------------------------------------------------------


def build_demo(
    endpoint: str | None = None, *, default_base: str = "", work_dir: str | Path | None = None
) -> gr.Blocks:
    """The Space's Blocks, talking to ``endpoint`` (default: HF_ENDPOINT or the public Hub).

    Each browser tab gets its own folder under ``work_dir`` (default: the system temp dir),
    deleted when the tab closes or after ``SESSION_TTL`` seconds without activity.
    """
    from hub_merge.hub import resolve_endpoint
    from hub_merge.zoo import TASKS

    h = build_handlers(endpoint, work_dir)
    oauth = on_oauth_space()
    with gr.Blocks(title="hub-merge") as demo:
        state = gr.State(None, time_to_live=SESSION_TTL, delete_callback=close_session)
        gr.Markdown(
            "# hub-merge\nMerge models of one family: find a base model's fine-tunes and "
            "adapters, see how related they are, let a kinship-guided greedy search merge them, "
            f"and publish the winner with its lineage. Hub: `{resolve_endpoint(endpoint)}`"
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

        gr.Markdown("## 2. Kinship")
        kinship_btn = gr.Button("Measure kinship", elem_id="kinship")
        with gr.Row():
            heatmap = gr.Image(label="Kinship heatmap", type="filepath", elem_id="heatmap")
            kin_table = gr.Dataframe(label="Kinship (Pearson)", interactive=False)

        gr.Markdown("## 3. Search")
        with gr.Row():
            builtin = gr.CheckboxGroup(list(TASKS), label="Built-in tasks", elem_id="builtin")
            n_examples = gr.Slider(8, 256, value=32, step=8, label="Examples per built-in task")
            uploads = gr.File(
                label="…or upload JSONL tasks ({prompt, answer} per line)",
                file_count="multiple",
                file_types=[".jsonl"],
            )
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
            method = gr.Dropdown(METHODS, value="slerp", label="Merge method", elem_id="method")
        with gr.Row():
            settings_json = gr.Code(
                strategy_defaults("greedy"),
                language="json",
                label="The strategy's other settings (JSON, its defaults shown)",
                elem_id="settings",
            )
            limit = gr.Number(
                value=None, label="Examples per task (blank: all)", precision=0, elem_id="limit"
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
            headers=["model", "dev fitness", "test mean", "test per task"],
            interactive=False,
            label="Winner against the baselines (each expert, the uniform average)",
            elem_id="baselines",
        )
        with gr.Row():
            fitness = gr.Image(label="Fitness by generation", type="filepath")
            tree = gr.Image(label="Family tree", type="filepath")

        gr.Markdown("## 4. Card and push")
        with gr.Row():
            repo_id = gr.Textbox(label="Repo id (name, or namespace/name)", elem_id="repo")
            license = gr.Textbox(label="License (when the parents' licenses do not decide it)")
            private = gr.Checkbox(label="Private")
        with gr.Row():
            preview_btn = gr.Button("Preview card")
            push_btn = gr.Button("Push to the Hub", variant="primary", elem_id="push")
        pushed = gr.Markdown(elem_id="pushed")
        pushed_url = gr.Textbox(label="Pushed repo", interactive=False, elem_id="pushed-url")
        with gr.Accordion("Model card preview", open=False):
            card = gr.Markdown(elem_id="card")

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
        )
        strategy.change(
            lambda name: (strategy_defaults(name or "greedy"), gr.Row(visible=name == "greedy")),
            [strategy],
            [settings_json, greedy_row],
        )
        cancel_btn.click(h["cancel"], [state], [status], cancels=[run_event], api_name="cancel")
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
