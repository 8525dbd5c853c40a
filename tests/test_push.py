"""push(): one commit per push, nothing half-done on failure, clear auth errors, no token leaks."""

from __future__ import annotations

import shutil

import pytest

from hub_merge.errors import AuthError, PushError
from hub_merge.push import push


@pytest.fixture
def hub(local_hub):
    """The local Hub server (tests/fixtures/localhub.py); a missing fixture is an error."""
    return local_hub


def _api(hub):
    from hub_merge.hub import get_api

    return get_api(hub.endpoint, hub.token)


def _commits(hub, repo_id):
    return [c.commit_id for c in _api(hub).list_repo_commits(repo_id)]


def test_push_creates_repo_then_adds_a_commit_on_top(hub, hubio_models, tmp_path):
    repo_id = f"{hub.user}/pushed"
    folder = tmp_path / "out"
    shutil.copytree(hubio_models.expert, folder)
    first = push(
        folder, repo_id, endpoint=hub.endpoint, token=hub.token, commit_message="first merge"
    )
    assert first.created_repo and first.commit_sha in first.commit_url and first.pr_url is None
    files = set(_api(hub).list_repo_files(repo_id))
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= files
    (folder / "hub_merge.json").write_text("{}")
    second = push(folder, repo_id, endpoint=hub.endpoint, token=hub.token)
    assert not second.created_repo
    commits = _commits(hub, repo_id)
    assert commits[0] == second.commit_sha and commits[1] == first.commit_sha  # one commit each
    assert "hub_merge.json" in _api(hub).list_repo_files(repo_id)


def test_unreadable_file_fails_before_touching_the_hub(hub, hubio_models, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(hubio_models.expert, folder)
    (folder / "broken.safetensors").symlink_to(tmp_path / "gone")
    with pytest.raises(PushError, match="broken.safetensors") as info:
        push(folder, f"{hub.user}/never", endpoint=hub.endpoint, token=hub.token)
    assert "nothing was pushed" in str(info.value)
    assert not _api(hub).repo_exists(f"{hub.user}/never")


def test_failed_commit_leaves_existing_repo_unchanged(hub, hubio_models, tmp_path):
    # The commit itself fails on the server (the target branch does not exist): the LFS blobs
    # were uploaded, but no commit lands, and the message says what to retry.
    repo_id = f"{hub.user}/stable"
    push(hubio_models.base, repo_id, endpoint=hub.endpoint, token=hub.token)
    before = _commits(hub, repo_id)
    with pytest.raises(PushError, match="Nothing was committed") as info:
        push(
            hubio_models.expert,
            repo_id,
            revision="no-such-branch",
            endpoint=hub.endpoint,
            token=hub.token,
        )
    assert "run the same push again" in str(info.value)
    assert _commits(hub, repo_id) == before


def test_failed_first_push_deletes_the_repo_it_created(hub, hubio_models):
    repo_id = f"{hub.user}/short-lived"
    with pytest.raises(PushError, match="deleted again"):
        push(
            hubio_models.expert,
            repo_id,
            revision="no-such-branch",
            endpoint=hub.endpoint,
            token=hub.token,
        )
    assert not _api(hub).repo_exists(repo_id)


def test_read_only_and_expired_tokens_are_auth_errors(hub, hubio_models):
    with pytest.raises(AuthError, match="write") as info:
        push(hubio_models.expert, f"{hub.user}/ro", endpoint=hub.endpoint, token=hub.read_token)
    assert hub.read_token not in str(info.value)
    assert not _api(hub).repo_exists(f"{hub.user}/ro")
    expired = "hf_ExpiredTokenThatServerRejects1"
    with pytest.raises(AuthError, match="invalid or expired") as info:
        push(hubio_models.expert, f"{hub.user}/exp", endpoint=hub.endpoint, token=expired)
    assert expired not in str(info.value)


def test_push_checks_the_folder_and_hides_the_token(tmp_path):
    from hub_merge.errors import HubError

    with pytest.raises(PushError, match="not a folder"):
        push(tmp_path / "missing", "me/x", endpoint="http://127.0.0.1:9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError, match="Nothing to push"):
        push(tmp_path / "empty", "me/x", endpoint="http://127.0.0.1:9")
    (tmp_path / "empty" / "config.json").write_text("{}")
    secret = "hf_DoNotLeakThisToken42"
    with pytest.raises(HubError, match="cannot reach") as info:
        push(tmp_path / "empty", "me/x", endpoint="http://127.0.0.1:9", token=secret)
    assert secret not in str(info.value)
