"""pytest plugin for ``scripts/hf_hub_suite.py``: which of huggingface_hub's tests judge the local Hub.

Loaded into the upstream test run (``-p hf_hub_suite_plugin``). A collected test is KEPT when it
talks to a Hub for model repos; it is DESELECTED, with the reason printed in the summary, when:

- it reads the production Hub (``@pytest.mark.production``): no internet, and those repos are
  not ours;
- it needs Xet (``@pytest.mark.xet``), git over HTTP (``git_lfs``), or is skipped upstream;
- it exercises a feature ``hub serve`` does not claim (UNCLAIMED below);
- it never reaches a server at all (CLIENT_ONLY: mocked HTTP, URL building, payload builders):
  such a test would pass or fail whatever the server does, so it cannot judge it.

Every kept test is also watched: the requests it (or a fixture it set up first) sends to the
local Hub are counted, and a kept test that sent none is listed at the end, so the CLIENT_ONLY
list can be checked against what really happened.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

# (substring of the node id, why the local Hub is not judged by it)
UNCLAIMED: list[tuple[str, str]] = [
    ("TestAccessRequestAPI", "gated repos / access requests"),
    ("gated_repo", "gated repos"),
    ("TestCollectionAPI", "collections"),
    ("TestHfApiDiscussions", "discussions"),
    ("TestHfApiDuplicateSpace", "Spaces"),
    ("TestSpaceAPI", "Spaces"),
    ("TestHfApiInferenceCatalog", "inference"),
    ("TestWebhookApi", "webhooks"),
    ("TestPaperApi", "papers"),
    ("TestUserApi", "user/org profiles"),
    ("TestActivityApi", "likes"),
    ("TestListAndPermanentlyDeleteLFSFiles", "LFS file listing/permanent deletion (storage admin)"),
    (
        "TestHfApiEndpoints::test_update_repo_settings",
        "gated repos (it sets gated='auto'/'manual')",
    ),
    ("test_create_repo_private_by_default", "organizations (an enterprise org's default)"),
    ("test_empty_commit_on_pr", "discussions (it opens a PR with create_pull_request)"),
    ("history_on_special_ref", "discussions (it opens a PR with create_pull_request)"),
    ("test_staging_list_datasets", "dataset repos"),
    ("TestHfApiPrivate::test_dataset_info", "dataset repos"),
    ("test_update_dataset_repo_settings", "dataset repos"),
]

# Tests that never send a request to a Hub: mocked sessions, URL and payload builders.
CLIENT_ONLY: list[str] = [
    "TestCreateSymlink",
    "TestDiskUsageWarning",
    "TestHttpGet",
    "TestNormalizeEtag",
    "TestHfHubDownloadRelativePaths",
    "TestDownloadHfApiAlias",
    "TestHfApiTokenAttribute",
    "TestParseHFUrl",
    "TestRepoUrl",
    "TestUploadFolderMocked",
    "test_whoami_rate_limit_suggest_caching",
    "test_whoami_with_token_false",  # refused by the client before any request
    "test_upload_file_validation",
    "test_move_repo_invalid_repo_id",
    "test_staging_list_models",  # a lazy iterator the test never reads
    "test_resolve_revision_not_cached",  # offline
    "test_local_files_only_and_file_",  # local_files_only
    "test_metadata_ok_and_revision_is_a_commit_hash_and_match",  # answered from local metadata
    "test_commit_operation_validation",
    "test_hf_hub_url_on_awful",
    "test_hf_api.py::test_",  # module-level: Inference Endpoint payload builders
    "test_snapshot_download.py::test_",  # module-level: ResolvedRevision / tree-cache helpers
]

_requests: dict[str, int] = {}
_current: list[str] = [""]
_reasons: dict[str, int] = {}


def _why_not(item: pytest.Item) -> str | None:
    marks = {m.name for m in item.iter_markers()}
    if "production" in marks:
        return "production Hub (read-only, not reachable)"
    if "xet" in marks:
        return "Xet"
    if "git_lfs" in marks:
        return "git over HTTP"
    if "skip" in marks:
        return "skipped upstream"
    for part, why in UNCLAIMED:
        if part in item.nodeid:
            return f"not claimed: {why}"
    if any(part in item.nodeid for part in CLIENT_ONLY):
        return "client only (no request to a Hub)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        why = _why_not(item)
        if why is None:
            kept.append(item)
        else:
            dropped.append(item)
            _reasons[why] = _reasons.get(why, 0) + 1
    items[:] = kept
    config.hook.pytest_deselected(items=dropped)


def pytest_configure(config: pytest.Config) -> None:
    import httpx

    endpoint = os.environ["HF_ENDPOINT"]
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        if str(request.url).startswith(endpoint):
            _requests[_current[0]] = _requests.get(_current[0], 0) + 1
        return original(self, request, *args, **kwargs)

    httpx.Client.send = send  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current[0] = item.nodeid


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    tr.section("hf_hub_suite: deselected (what the local Hub does not claim)")
    for why, n in sorted(_reasons.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"{n:4d}  {why}")
    ran = [r.nodeid for r in tr.stats.get("passed", []) + tr.stats.get("failed", [])]
    silent = sorted({n for n in ran if not _requests.get(n)})
    if silent:
        tr.section("hf_hub_suite: kept tests that sent no request (add them to CLIENT_ONLY)")
        for n in silent:
            tr.write_line(n)
