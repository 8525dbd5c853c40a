"""The Hub client: endpoint, ``HfApi`` facade, card validation, and errors mapped in one place.

Every call of hub-merge to a Hub goes through :func:`get_api` (our library name in the user
agent, Xet off for non-public endpoints) and every huggingface_hub or transport error through
:func:`hub_errors`, which turns it into :class:`~hub_merge.errors.HubError` / ``AuthError`` with
a message that says what to do and no token in it (:func:`scrub`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import huggingface_hub
from huggingface_hub import HfApi, constants
from huggingface_hub import errors as hf_errors

from ..errors import AuthError, CardValidationError, HubError, HubMergeError
from ..version import __version__

try:  # huggingface_hub >= 2 ships its own httpx fork; older releases use httpx itself.
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx  # type: ignore[no-redef]

PUBLIC_ENDPOINT = "https://huggingface.co"


# --- endpoint, client and errors ----------------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The endpoint to use: the argument, else ``HF_ENDPOINT``, else huggingface_hub's default."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_public_hub(endpoint: str | None = None) -> bool:
    return resolve_endpoint(endpoint) == PUBLIC_ENDPOINT


# HF_HUB_DISABLE_XET as the user's environment set it when hub-merge was imported.
_XET_OFF_BY_USER = bool(constants.HF_HUB_DISABLE_XET)


def configure_transfers(endpoint: str | None = None) -> None:
    """Switch Xet transfers off for any endpoint that is not the public Hub, and back on (unless
    the user's ``HF_HUB_DISABLE_XET`` turned them off) for the public Hub.

    ``hf_xet`` is a dependency of huggingface_hub and is used whenever importable, but only the
    public Hub (and the local Hub, which takes either) is sure to serve Xet; other servers then
    fail uploads at ``/xet-write-token/`` (a 404).
    The client reads ``constants.HF_HUB_DISABLE_XET`` at call time, so setting it here suffices;
    setting it on every call, not only off, lets one process publish to a local Hub and then to
    the Hub without losing Xet there.
    """
    constants.HF_HUB_DISABLE_XET = _XET_OFF_BY_USER or not is_public_hub(endpoint)


def get_api(endpoint: str | None = None, token: str | None = None) -> HfApi:
    """An ``HfApi`` for ``endpoint`` that identifies hub-merge in its user agent.

    ``token=None`` lets huggingface_hub resolve it as usual (``HF_TOKEN``, then the
    ``hf auth login`` store).
    """
    endpoint = resolve_endpoint(endpoint)
    configure_transfers(endpoint)
    return HfApi(
        endpoint=endpoint, token=token, library_name="hub-merge", library_version=__version__
    )


def validate_card_on_hub(
    text: str, *, repo_type: str = "model", endpoint: str | None = None, token: str | None = None
) -> None:
    """Ask the Hub's ``/api/validate-yaml`` whether it would accept this README, before uploading.

    ``ModelCard.validate`` does the same call but always against ``constants.ENDPOINT`` (fixed at
    import), so it cannot check a card for a local or enterprise Hub chosen per call; this posts
    the same body through huggingface_hub's own HTTP session to the endpoint in use.

    Raises:
        CardValidationError: the Hub rejected the metadata (its message, one problem per line).
        HubError: the Hub could not be asked (network, auth).
    """
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{resolve_endpoint(endpoint)}/api/validate-yaml"
    headers = build_hf_headers(token=token, library_name="hub-merge", library_version=__version__)
    headers["Accept"] = "text/plain"
    with hub_errors("validate the model card", endpoint=endpoint, token=token):
        response = get_session().post(
            url, json={"repoType": repo_type, "content": text}, headers=headers
        )
        if response.status_code == 400:
            raise CardValidationError(
                "The Hub rejected the model card's metadata: "
                + scrub(response.text.strip(), token)
                + " Fix the card (or the --license) and push again; nothing was uploaded."
            )
        hf_raise_for_status(response)


def _known_tokens(token: str | None) -> list[str]:
    tokens = [token] if token else []
    with contextlib.suppress(Exception):
        stored = huggingface_hub.get_token()
        if stored:
            tokens.append(stored)
    return tokens


_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def scrub(text: str, token: str | None = None) -> str:
    """Remove any token (the one given, the resolved one, anything shaped like ``hf_...``)."""
    for secret in _known_tokens(token):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _TOKEN_LIKE.sub("hf_***", text)
    return re.sub(r"(?i)(authorization:?\s*bearer\s+)\S+", r"\1***", text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def translate_error(
    err: BaseException,
    *,
    action: str,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    write: bool = False,
) -> HubError:
    """Map a huggingface_hub / transport error to a HubError that says what to do next."""
    where = resolve_endpoint(endpoint)
    repo = f"'{repo_id}'" if repo_id else "the repo"
    detail = _first_line(err)
    login = "Log in with `hf auth login`, set HF_TOKEN, or pass token=... (CLI: --token)."
    status = _status(err)
    if isinstance(err, hf_errors.GatedRepoError):
        out: HubError = AuthError(
            f"{repo} is gated: accept its conditions on {where}/{repo_id} with your account, then "
            f"retry with a token of that account. {login}"
        )
    elif isinstance(err, hf_errors.RepositoryNotFoundError):
        out = HubError(
            f"Cannot {action}: {repo} was not found on {where}, or it is private and your token "
            f"cannot see it. Check the id (and --endpoint); for a private repo: {login}"
        )
    elif isinstance(err, hf_errors.RevisionNotFoundError):
        out = HubError(
            f"Cannot {action}: revision '{revision}' does not exist in {repo} on {where}. Use a "
            "branch, tag or full commit sha that exists (see `hf download`'s --revision)."
        )
    elif isinstance(err, hf_errors.OfflineModeIsEnabled | hf_errors.LocalEntryNotFoundError):
        out = HubError(
            f"Cannot {action}: '{repo_id}{'@' + revision if revision else ''}' is not in the local cache "
            "and offline mode is on (HF_HUB_OFFLINE=1). Run once online, or unset HF_HUB_OFFLINE."
        )
    elif isinstance(err, hf_errors.EntryNotFoundError):
        out = HubError(f"Cannot {action}: a file is missing from {repo}: {detail}")
    elif status == 401:
        out = AuthError(
            f"Cannot {action}: the Hub at {where} rejected your token (invalid or expired). "
            f"Create a new one and {login[0].lower()}{login[1:]}"
        )
    elif status == 403:
        need = "write" if write else "read"
        out = AuthError(
            f"Cannot {action}: your token lacks {need} access to {repo} on {where} (a read-only or "
            f"fine-grained token?). Use a token with {need} rights for that namespace. {login}"
        )
    elif isinstance(err, _httpx.TransportError | ConnectionError | TimeoutError):
        out = HubError(
            f"Cannot {action}: cannot reach {where} ({type(err).__name__}: {detail}). Check the "
            "network and --endpoint / HF_ENDPOINT; to work from the cache, set HF_HUB_OFFLINE=1."
        )
    elif isinstance(err, hf_errors.HfHubHTTPError):
        out = HubError(f"Cannot {action}: the Hub at {where} answered HTTP {status}: {detail}")
    else:
        out = HubError(f"Cannot {action}: {type(err).__name__}: {detail}")
    out.args = (scrub(str(out), token),)
    return out


@contextlib.contextmanager
def hub_errors(
    action: str,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    write: bool = False,
) -> Iterator[None]:
    """Turn huggingface_hub and network errors raised inside the block into HubError/AuthError."""
    try:
        yield
    except HubMergeError:
        raise
    except (
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.HFValidationError,
        _httpx.HTTPError,
        OSError,
    ) as err:
        raise translate_error(
            err,
            action=action,
            repo_id=repo_id,
            revision=revision,
            endpoint=endpoint,
            token=token,
            write=write,
        ) from None  # the original may quote request headers; do not chain it


def is_offline() -> bool:
    return bool(constants.is_offline_mode())
