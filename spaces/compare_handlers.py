"""The Compare tab's handlers: every strategy on the visitor's models and tasks, one leaderboard,
and a push per row.

``hub_merge.leaderboard.compare_strategies`` runs in a worker thread (``workflow.SearchRun``: the
same cancel, wall-time cap and closed-tab watchdog as a search) on one dev/test split with one
set of baselines and one score cache in the session's folder; the leaderboard is shown as its
rows finish. ``push_row`` publishes one row with ``hub_merge.publish.publish_row`` (the
leaderboard on its card). Every input is checked against the Space's caps
(``space_limits.SpaceLimits``: strategies, budget, settings, rows, tokens) before anything runs,
and errors name no server folder.

No ``from __future__ import annotations`` here: Gradio reads the handlers' annotations
(``gr.OAuthToken``, ``gr.Progress``) at runtime to inject the caller's token and progress.
"""

from collections.abc import Callable
from typing import Any

import gradio as gr
from space_limits import SpaceLimits
from workflow import (
    SearchRun,
    Session,
    compare_progress,
    compare_settings,
    leaderboard_rows,
    publishable_rows,
    task_files,
    user_token,
)

POLL_SECONDS = 1.0  # as the search handler: a cancel or a closed tab lands within a second
IDLE_SECONDS = 60.0


def build_compare_handlers(
    endpoint: str | None,
    limits: SpaceLimits,
    *,
    session: Callable[[Any], tuple[Session, bool]],
    owned: Callable[[Session, bool], Any],
    error: Callable[[BaseException, Any, Session], gr.Error],
    check_tokens: Callable[[Any], None],
    models: Callable[..., Any],
    publish_as: Callable[..., tuple[Any, str]],
) -> dict[str, Any]:
    """The Compare tab's handlers, sharing the Search tab's session, error and token helpers."""
    _session, _owned, _error, _check_tokens, _models = session, owned, error, check_tokens, models

    def _token_checked_compare(config: Any) -> Any:
        """The compare, after the token caps are checked."""
        from hub_merge.leaderboard import compare_strategies

        _check_tokens(config)
        return compare_strategies(config)

    def compare(
        state: Session | None,
        base: str,
        chosen: list[str],
        pasted: str,
        builtin: list[str],
        n_examples: float,
        uploads: list[Any] | None,
        strategies: list[str] | None,
        budget: float | None,
        settings_json: str | None,
        limit: float | None,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ):
        """Run ``hub_merge.compare_strategies`` on the form's models and tasks; yields the
        leaderboard as the rows finish (one progress step per strategy)."""
        from hub_merge.leaderboard import CompareConfig
        from hub_merge.search.strategy import strategy_names

        session, new = _session(state)
        token = user_token(token_text, oauth_token)
        with _owned(session, new):  # until the first yield hands the session to Gradio
            base_ref, refs = _models(
                base,
                chosen,
                pasted,
                "A compare merges at least two candidates; pick or paste more.",
            )
            if any(r is not None and r.running for r in (session.search, session.compare)):
                raise gr.Error("A search or compare is already running in this tab; cancel it.")
            try:
                names = [str(n) for n in (strategies or [])]
                known = strategy_names()
                unknown = [n for n in names if n not in known]
                if unknown:
                    raise gr.Error(
                        f"Unknown strategy {unknown[0][:40]!r}; choose from {', '.join(known)}."
                    )
                names = list(dict.fromkeys(names))  # the visitor's order, no repeats
                if not names:
                    raise gr.Error("Pick at least one strategy to compare.")
                settings = compare_settings(settings_json, names)
                total = limits.check_compare(names, settings, int(budget or 0), len(refs))
                if limit:
                    limits.check_rows(int(limit), "Examples per task")
                tasks = task_files(session, builtin, int(n_examples or 32), uploads, limits)
                folder = session.new_compare_dir()
                config = CompareConfig(
                    base=base_ref,  # Hub references: never read as server folders
                    experts=refs,
                    tasks=tasks,
                    out=str(folder),
                    strategies=names,
                    budget=total,  # shared evenly between the strategies
                    settings=settings,
                    limit=int(limit) if limit else None,
                    progress=True,
                    endpoint=endpoint,
                    token=token or None,
                    cache_dir=str(session.cache_dir),
                )
                runs = len(config.check())  # every check that needs no model, now
            except gr.Error:
                raise
            except Exception as err:
                raise _error(err, token, session) from None
            run = session.compare = SearchRun(
                config,
                max_seconds=limits.max_search_seconds,
                idle_seconds=IDLE_SECONDS,
                runner=_token_checked_compare,
            ).start()
            progress(0, desc="pulling models and scoring the experts")
        try:
            # Hand the session to Gradio at once, so an early cancel finds the running compare.
            yield (
                session,
                "Running: pulling models.",
                _frame(*leaderboard_rows(folder)[:2]),
                None,
                "",
                [],
            )
            # Gradio holds the session from here on, and deletes it with the tab (or the TTL).
            while not run.wait(POLL_SECONDS):
                run.heartbeat()
                done = compare_progress(folder, runs)
                progress(done / runs, desc=f"{done} of {runs} strategies finished")
                head, rows, notes = leaderboard_rows(folder)
                status = f"Running: {done} of {runs} strategies finished."
                yield session, status, _frame(head, rows), None, notes, []
        finally:
            if run.running:
                run.cancel("the request was cancelled or its page closed")
        head, rows, notes = leaderboard_rows(folder)
        plot = folder / "leaderboard.png"
        if run.cancelled:
            yield (
                session,
                f"Cancelled ({run.reason}). The finished rows are kept in the leaderboard.",
                _frame(head, rows),
                str(plot) if plot.is_file() else None,
                notes,
                publishable_rows(folder),
            )
            return
        if run.error is not None:
            raise _error(run.error, token, session)
        board = run.result
        rec = board.recommended()
        status = "**Done**: every strategy ran on the same dev/test split and baselines." + (
            f" Recommended (best on the dev rows): **{rec.label}**." if rec else ""
        )
        yield session, status, _frame(head, rows), str(plot), notes, publishable_rows(folder)

    def push_row(
        state: Session | None,
        row: str,
        repo_id: str,
        license: str,
        private: bool,
        token_text: str,
        oauth_token: gr.OAuthToken | None,
    ):
        """Publish one leaderboard row's model with the leaderboard on its card."""
        from hub_merge.publish import publish_row

        if not isinstance(state, Session):
            raise gr.Error("Run a compare first; this pushes one of its rows.")
        session, _ = _session(state)
        token = user_token(token_text, oauth_token)
        folder = session.compare_dir
        if folder is None or not (folder / "leaderboard.json").is_file():
            raise gr.Error("Run a compare first; this pushes one of its rows.")
        if session.compare is not None and session.compare.running:
            raise gr.Error("The compare is still running; wait for it or cancel it.")
        row = (row or "").strip()
        if not row or len(row) > 64:
            raise gr.Error("Name the leaderboard row to push, e.g. dam.")
        result, url = publish_as(
            session,
            token,
            repo_id,
            lambda repo: publish_row(
                folder,
                repo,
                row=row,
                license=(license or "").strip() or None,
                private=bool(private),
                endpoint=endpoint,
                token=token,
            ),
        )
        return (
            session,
            f"Pushed row **{row}** to **{result.push.repo_id}** in commit "
            f"`{result.push.commit_sha[:10]}`, the leaderboard on its card: [{url}]({url})",
            url,
        )

    def cancel_compare(state: Session | None):
        if isinstance(state, Session) and state.compare is not None and state.compare.running:
            state.compare.cancel()
            return "Cancelling: the compare keeps its finished rows…"
        return "Nothing is running."

    return {"compare": compare, "cancel_compare": cancel_compare, "push_row": push_row}


def _frame(headers: list[str], rows: list[list[str]]) -> Any:
    """The leaderboard as a Dataframe update (its headers change with the tasks)."""
    if not headers:
        return gr.Dataframe(value=[], headers=["row"])
    return gr.Dataframe(value=rows, headers=headers)
