"""Where a model bundle is: a local folder, or a Hugging Face hub repo in the hub cache.

A hub repo is fetched with ``huggingface_hub.snapshot_download`` (the hub cache layout:
``models--ORG--NAME/snapshots/<commit>/...`` with ``refs/<branch>`` naming the commit), only the
bundle's own files, so a repo that also holds pickles never brings them here. Offline
(``local_files_only=True`` or ``HF_HUB_OFFLINE=1``) the cache alone answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["resolve_bundle"]

# What a hub repo id looks like ("name" or "org/name"); anything else that is not a folder is a
# missing local path. huggingface_hub checks the finer rules.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(?:/[A-Za-z0-9][\w.\-]*)?")


def resolve_bundle(
    name_or_path: str | os.PathLike,
    files: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """The local folder of a bundle: ``name_or_path`` itself, or a hub repo's snapshot.

    Args:
        name_or_path: A local folder, or a hub repo id (``"org/name"``) when no such folder
            exists.
        files: The bundle's file names: only these are fetched from a repo.
        revision: A hub branch, tag or commit (default ``main``); refused for local folders.
        cache_dir: The hub cache (default ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
        local_files_only: Never reach the hub: the repo must be in the cache (as with
            ``HF_HUB_OFFLINE=1``).
        token: A hub token for private repos (see ``huggingface_hub``).

    Returns:
        The folder's path.

    Raises:
        FileNotFoundError: no such folder and not a repo id; a repo that is neither in the cache
            nor downloadable (the message says why and what to do).
        ValueError: a file instead of a folder; ``revision`` with a local folder; an invalid
            repo id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise ValueError(f"give a bundle folder or a hub repo id, got {name_or_path!r}")
    text = os.fspath(name_or_path)
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to hub repos, but {text!r} is a local folder"
            )
        return path
    if os.path.exists(path):
        raise ValueError(f"{text!r} is a file; give the bundle's folder")
    if not _REPO_ID.fullmatch(text):
        raise FileNotFoundError(f"the bundle folder {text!r} does not exist")
    return _hub_snapshot(text, list(files), revision, cache_dir, local_files_only, token)


def _hub_snapshot(repo_id, files, revision, cache_dir, local_files_only, token) -> str:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
        )
    except ImportError:
        raise FileNotFoundError(
            f"there is no folder {repo_id!r}, and loading it as a hub repo id needs "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    where = f"hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=files,
        )
    except HFValidationError as e:
        raise ValueError(
            f"{repo_id!r} is neither a local folder nor a valid hub repo id: {e}"
        ) from None
    except LocalEntryNotFoundError:
        offline = local_files_only or constants.HF_HUB_OFFLINE
        cache = os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE
        reason = (
            "downloads are off (local_files_only=True or HF_HUB_OFFLINE=1)"
            if offline
            else "the hub cannot be reached"
        )
        raise FileNotFoundError(
            f"there is no folder {repo_id!r}, and the {where} is not in the hub cache "
            f"{cache!r} while {reason}. Download it where the hub is reachable "
            f"(`hf download {repo_id}`), or give the bundle's local folder."
        ) from None
    except HfHubHTTPError as e:  # no such repo or revision, or a private one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"there is no folder {repo_id!r}, and the {where} cannot be fetched: {first}"
        ) from None
