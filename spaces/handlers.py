"""The Space's event handlers: one per button, each a thin call into the hub-merge Python API.

Each handler gets only its own tab's :class:`~workflow.Session` and the caller's own token, and
checks the visitor's input (Hub ids only, never server paths) before anything touches the Hub or
the disk. ``app.py`` lays these out in Gradio Blocks; it puts this folder on ``sys.path`` first, so
``workflow`` (session bookkeeping) imports as a sibling both on a Space and under the tests.
"""

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from compare_handlers import build_compare_handlers
from space_limits import SpaceLimits
from workflow import (
    SearchRun,
    Session,
    baselines_table,
    generation_table,
    live_fitness_plot,
    merge_ids,
    parse_ids,
    strategy_settings,
    task_files,
    user_token,
)

from hub_merge.errors import HubMergeError
from hub_merge.refs import ModelRef, parse_hub_ref

logger = logging.getLogger("hub_merge.space")

RELATIONS = ["finetune", "adapter", "merge"]
POLL_SECONDS = 1.0  # the search handler yields this often, so a cancel or a closed tab lands
IDLE_SECONDS = 60.0  # a search nobody has polled for this long is cancelled


def _user_error(
    err: BaseException, token: str | bool, folders: Sequence[str | Path | None] = ()
) -> gr.Error:
    """One line for the visitor: no token, and no server folder (each becomes '...')."""
    from hub_merge.hub import scrub

    secret = token if isinstance(token, str) else None
    if isinstance(err, HubMergeError):
        text = str(err)
    else:
        logger.exception("unexpected error in the Space")
        text = f"Unexpected error ({type(err).__name__}): {err}"
    roots = [str(Path(f).resolve()) for f in folders if f] + [tempfile.gettempdir()]
    for root in sorted(set(roots), key=len, reverse=True):
        text = text.replace(root, "...")
    return gr.Error(scrub(text, secret))


def _experts(chosen: list[str] | None, pasted: str | None) -> list[str]:
    return merge_ids(chosen, parse_ids(pasted))


def _models(
    base: str | None, chosen: list[str] | None, pasted: str | None, too_few: str
) -> tuple[ModelRef, list[ModelRef]]:
    """The form's base and candidates, checked (a base, two candidates, Hub ids only)."""
    experts = _experts(chosen, pasted)
    if not (base or "").strip():
        raise gr.Error("Enter the base model first.")
    if len(experts) < 2:
        raise gr.Error(too_few)
    return hub_refs(base, experts)


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


def build_handlers(
    endpoint: str | None, work_dir: str | Path | None = None, limits: SpaceLimits | None = None
) -> dict[str, Any]:
    """Event handlers bound to the server's Hub endpoint (not a user input: a user-chosen
    endpoint would make the server send requests, and tokens, wherever a visitor asked).

    ``limits`` caps each visitor's work (default: ``SpaceLimits.from_env()``).
    """
    from hub_merge import hub

    limits = limits or SpaceLimits.from_env()

    def _session(state: Session | None) -> tuple[Session, bool]:
        """The tab's session, or a new one (registered before anything is downloaded into it);
        True when it is new: a call that fails then deletes it, since Gradio never got it."""
        if isinstance(state, Session):
            state.touch()
            return state, False
        try:
            session = Session.create(
                work_dir, max_open=limits.max_sessions, ttl=limits.session_ttl_seconds
            )
        except HubMergeError as err:
            raise gr.Error(str(err)) from None
        return session, True

    @contextlib.contextmanager
    def _owned(session: Session, new: bool) -> Iterator[None]:
        """Delete a new session's folder (pulled models included) if the call fails."""
        try:
            yield
        except BaseException:
            if new:
                session.close()
            raise

    def _error(err: BaseException, token: str | bool, session: Session) -> gr.Error:
        return _user_error(err, token, [session.root, work_dir])

    def discover(
        state: Session | None,
        base: str,
        relations: list[str],
        limit: float,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
    ):
        session, new = _session(state)
        with _owned(session, new):
            return _discover(session, base, relations, limit, token_text, oauth_token)

    def _discover(session, base, relations, limit, token_text, oauth_token):
        token = user_token(token_text, oauth_token)
        if not (base or "").strip():
            raise gr.Error("Enter a base model id, e.g. org/name.")
        base_ref, _ = hub_refs(base)
        base = str(base_ref.repo_id)  # the model tree is per repo, whatever the revision
        try:
            found = hub.discover(
                base,
                relations or RELATIONS,
                limit=max(1, min(int(limit or 20), 100)),
                endpoint=endpoint,
                token=token,
            )
        except Exception as err:
            raise _error(err, token, session) from None
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
        session, new = _session(state)
        with _owned(session, new):
            return _kinship(session, base, chosen, pasted, token_text, oauth_token, progress)

    def _kinship(session, base, chosen, pasted, token_text, oauth_token, progress):
        from hub_merge.kinship import kinship_matrix
        from hub_merge.plots import plot_kinship

        token = user_token(token_text, oauth_token)
        base_ref, refs = _models(
            base, chosen, pasted, "Pick or paste at least two candidate models to compare."
        )
        if len(refs) > limits.max_candidates:
            raise gr.Error(
                f"{len(refs)} candidates is over this Space's limit of {limits.max_candidates}."
            )
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
            raise _error(err, token, session) from None
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

        session, new = _session(state)
        token = user_token(token_text, oauth_token)
        with _owned(session, new):  # until the first yield hands the session to Gradio
            base_ref, refs = _models(
                base, chosen, pasted, "A search merges at least two candidates; pick or paste more."
            )
            if session.search is not None and session.search.running:
                raise gr.Error("A search is already running in this tab; cancel it first.")
            try:
                strategy = strategy or "greedy"
                greedy = {"k": int(k), "generations": int(generations), "method": method}
                settings = strategy_settings(strategy, settings_json, greedy)
                budget = limits.check_search(settings, int(budget or 0), len(refs))
                if limit:
                    limits.check_rows(int(limit), "Examples per task")
                SearchConfig(  # the strategy and its settings are checked before anything is made
                    base=base_ref,
                    experts=refs,
                    tasks=[],
                    out="",
                    strategy=strategy,
                    settings=settings,
                ).strategy_settings()
                tasks = task_files(session, builtin, int(n_examples or 32), uploads, limits)
                run_dir = session.new_run_dir()
                config = SearchConfig(
                    base=base_ref,  # Hub references: the search never reads them as folders
                    experts=refs,
                    tasks=tasks,
                    out=str(run_dir),
                    strategy=strategy,
                    settings=settings,
                    budget=budget,
                    limit=int(limit) if limit else None,
                    progress=True,
                    endpoint=endpoint,
                    token=token,
                    cache_dir=str(session.cache_dir),
                )
            except Exception as err:
                raise _error(err, token, session) from None
            run = session.search = SearchRun(
                config,
                max_seconds=limits.max_search_seconds,
                idle_seconds=IDLE_SECONDS,
                runner=_token_checked_search,
            ).start()
            progress(0, desc="pulling models and scoring the experts")
        shown = None
        try:
            # Hand the session to Gradio at once, so a cancel sent while the models are still
            # being pulled finds the running search (before this, it answered "Nothing is running").
            yield (
                session,
                "Running: pulling models and scoring the experts.",
                [],
                None,
                None,
                "",
                [],
            )
            # Gradio holds the session from here on, and deletes it with the tab (or the TTL).
            # Yield at every poll, not only on news: Gradio can stop a generator only between
            # two yields, so this is what lets a cancel or a closed tab land within a second.
            while not run.wait(POLL_SECONDS):
                run.heartbeat()
                shown = live_fitness_plot(session, run_dir) or shown
                rows = generation_table(run_dir)
                done = f"generation {rows[-1][0]} done" if rows else "scoring"
                yield session, f"Running: {done}.", rows, shown, None, "", []
        finally:
            # Gradio closes this generator when the user cancels or leaves: stop the search too.
            if run.running:
                run.cancel("the request was cancelled or its page closed")
        if run.cancelled:
            rows = generation_table(run_dir)
            yield (
                session,
                f"Cancelled ({run.reason}). The run is saved as interrupted: the run folder "
                "kept every finished generation.",
                rows,
                live_fitness_plot(session, run_dir),
                None,
                "",
                [],
            )
            return
        if run.error is not None:
            raise _error(run.error, token, session)
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

    def _check_tokens(config: Any) -> None:
        """Every prompt and answer within the token caps, with the base model's tokenizer
        (their characters were capped before; the base is pulled into the session's cache,
        where the search or compare finds it)."""
        from transformers import AutoTokenizer

        from hub_merge.evaluate.tasks import load_task

        base = hub.pull(
            config.base, endpoint=endpoint, token=config.token, cache_dir=config.cache_dir
        )
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        tasks = [load_task(p) for p in config.tasks]
        limits.check_tokens(
            tokenizer, [(t.name, [(e.prompt, e.answer) for e in t.examples]) for t in tasks]
        )

    def _token_checked_search(config: Any) -> Any:
        """The search, after the token caps are checked."""
        from hub_merge.search import search as run_search

        _check_tokens(config)
        return run_search(config)

    def cancel(state: Session | None):
        if isinstance(state, Session) and state.search is not None and state.search.running:
            state.search.cancel()
            return "Cancelling: the search stops after saving its state…"
        return "Nothing is running."

    def preview(state: Session | None, repo_id: str, license: str):
        if not isinstance(state, Session):
            raise gr.Error("Run a search first; the card describes its winner.")
        session, _ = _session(state)
        if session.run_dir is None or not (session.run_dir / "family_tree.json").is_file():
            raise gr.Error("Run a search first; the card describes its winner.")
        return _card_text(session.run_dir, repo_id, license)

    def _publish_as(
        session: Session, token: str | bool, repo_id: str, publish: Callable[[str], Any]
    ) -> tuple[Any, str]:
        """Publish for the visitor: their token required, ``name`` made ``user/name``, any
        failure one scrubbed line; returns the publish result and the repo's URL."""
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
            result = publish(repo_id)
        except Exception as err:
            raise _error(err, token, session) from None
        return result, f"{hub.resolve_endpoint(endpoint).rstrip('/')}/{result.push.repo_id}"

    def push(
        state: Session | None,
        repo_id: str,
        license: str,
        private: bool,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
    ):
        from hub_merge.publish import publish

        if not isinstance(state, Session):
            raise gr.Error("Run a search first; pushing publishes its winner.")
        session, _ = _session(state)
        token = user_token(token_text, oauth_token)
        if session.run_dir is None or not (session.run_dir / "family_tree.json").is_file():
            raise gr.Error("Run a search first; pushing publishes its winner.")
        if session.search is not None and session.search.running:
            raise gr.Error("The search is still running; wait for it or cancel it.")
        if session.search is not None and session.search.cancelled:
            raise gr.Error(
                "Run a search first: the last one was cancelled before it finished, so it has "
                "no winner to publish."
            )
        result, url = _publish_as(
            session,
            token,
            repo_id,
            lambda repo: publish(
                session.run_dir,
                repo,
                license=(license or "").strip() or None,
                private=bool(private),
                endpoint=endpoint,
                token=token,
            ),
        )
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
        **build_compare_handlers(
            endpoint,
            limits,
            session=_session,
            owned=_owned,
            error=_error,
            check_tokens=_check_tokens,
            models=_models,
            publish_as=_publish_as,
        ),
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
