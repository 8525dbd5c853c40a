"""The local Hub's answers that huggingface_hub's own test suite checks (scripts/hf_hub_suite.sh),
each driven here through the real client: what a user of HfApi sees."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError


@pytest.fixture
def api(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub.endpoint, token=local_hub.token)


def test_a_repo_id_without_namespace_is_a_missing_repo_not_a_bare_404(api, local_hub):
    """The Hub's legacy ids (``gpt2``) name no repo here: the answer says RepoNotFound, so the
    client's ``*_exists`` helpers answer False instead of raising."""
    assert api.repo_exists("no-namespace") is False
    assert api.revision_exists("no-namespace", "main") is False
    assert api.file_exists("no-namespace", "file.txt") is False
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_commits("no-namespace")
    # A path that is no route and names no repo is still a plain 404.
    r = httpx.get(f"{local_hub.endpoint}/api/no-such-route")
    assert r.status_code == 404 and "x-error-code" not in r.headers


def test_missing_repo_error_names_the_url_once(api, local_hub):
    """The client's message already names the URL; the server adds no second repo-not-found line."""
    with pytest.raises(RepositoryNotFoundError) as err:
        api.create_commit(
            "alice/never-made", [CommitOperationAdd("a.txt", b"x")], commit_message="m"
        )
    text = str(err.value)
    assert text.lower().count("repository not found") == 1
    assert f"{local_hub.endpoint}/api/models/alice/never-made/preupload/main" in text


def test_tag_on_a_missing_revision_is_revision_not_found_before_the_name_is_judged(api):
    api.create_repo("alice/tags")
    with pytest.raises(RevisionNotFoundError):
        api.create_tag("alice/tags", tag="invalid tag", revision="foobar")
    with pytest.raises(HfHubHTTPError) as err:  # on a real revision the bad name is refused
        api.create_tag("alice/tags", tag="invalid tag", revision="main")
    assert err.value.response.status_code == 400
    assert [t.name for t in api.list_repo_refs("alice/tags").tags] == []


def test_a_refused_path_answers_422_as_the_hub(api):
    api.create_repo("alice/paths")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="..\\ddd", repo_id="alice/paths")
    assert err.value.response.status_code == 422
    assert "backslashes" in str(err.value)


def test_paths_info_and_tree_with_expand_give_each_path_its_last_commit(api):
    api.create_repo("alice/last")
    first = api.create_commit(
        "alice/last",
        [
            CommitOperationAdd("keep.txt", b"1"),
            CommitOperationAdd("dir/a.txt", b"a"),
            CommitOperationAdd("w.bin", b"LFS 1"),
        ],
        commit_message="initial commit",
    )
    # keep.txt is re-uploaded unchanged: it is not part of the second commit.
    second = api.create_commit(
        "alice/last",
        [CommitOperationAdd("keep.txt", b"1"), CommitOperationAdd("dir/b.txt", b"b")],
        commit_message="second commit",
    )
    infos = api.get_paths_info(
        "alice/last", ["keep.txt", "dir", "w.bin", "dir/a.txt", "missing"], expand=True
    )
    last = {i.path: i.last_commit for i in infos}
    assert set(last) == {"keep.txt", "dir", "w.bin", "dir/a.txt"}
    assert last["keep.txt"].oid == first.oid and last["keep.txt"].title == "initial commit"
    assert last["dir/a.txt"].oid == first.oid
    assert last["dir"].oid == second.oid and last["dir"].title == "second commit"
    assert last["w.bin"].date is not None
    # Without expand, no lastCommit (the Hub's default answer).
    assert all(i.last_commit is None for i in api.get_paths_info("alice/last", ["keep.txt"]))
    # The tree listing says the same with expand=True.
    tree = {i.path: i.last_commit for i in api.list_repo_tree("alice/last", expand=True)}
    assert tree["keep.txt"].oid == first.oid and tree["dir"].oid == second.oid
    nested = {i.path: i.last_commit for i in api.list_repo_tree("alice/last", "dir", expand=True)}
    assert nested["dir/a.txt"].oid == first.oid and nested["dir/b.txt"].oid == second.oid
    assert all(i.last_commit is None for i in api.list_repo_tree("alice/last"))


def test_a_moved_repo_answers_at_its_old_name_for_those_who_may_read_it(local_hub, tmp_path):
    """As on the Hub: the old name redirects (API and downloads) until a repo takes it again;
    a private repo's new name is not revealed to a caller who cannot read it."""
    alice = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    bob = HfApi(endpoint=local_hub.endpoint, token="hf_bob_write")
    alice.create_repo("alice/before", private=True)
    alice.upload_file(path_or_fileobj=b"content", path_in_repo="file.txt", repo_id="alice/before")
    alice.move_repo("alice/before", "alice/after")

    path = alice.hf_hub_download("alice/before", "file.txt", cache_dir=tmp_path / "c")
    assert open(path).read() == "content"
    assert alice.model_info("alice/before").id == "alice/after"
    assert alice.repo_exists("alice/before")
    with pytest.raises(RepositoryNotFoundError):  # bob cannot read the private repo
        bob.model_info("alice/before")
    assert not bob.file_exists("alice/before", "file.txt")

    # Moving back, then creating the free name anew, each ends the redirect.
    alice.move_repo("alice/after", "alice/before")
    assert alice.model_info("alice/before").id == "alice/before"
    alice.create_repo("alice/after")
    assert alice.model_info("alice/after").id == "alice/after"
    assert alice.list_repo_files("alice/after") == [".gitattributes"]
