"""Whether a file of a hub repo can be had, asked once and quickly.

transformers retries a hub request that fails for about half a minute and then raises an
error a page long; this asks once, without retries (with huggingface_hub's ``HF_HUB_ETAG_TIMEOUT``,
10 s unless set), and says in one phrase what is wrong: no network, offline mode, no such
repo, a gated repo, or a missing file. A file already in the local hub cache needs no request.
"""
from __future__ import annotations


def hub_problem(repo_id: str, filename: str) -> str | None:
    """Why ``repo_id``'s ``filename`` cannot be had from the hub or its local cache, or None if it can."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str):
            return None  # cached: transformers loads it without the network
        url = huggingface_hub.hf_hub_url(repo_id, filename)
        huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except errors.HFValidationError:
        return "it is not a valid hub id (namespace/name)"
    except errors.OfflineModeIsEnabled:
        return "the hub cannot be reached: HF_HUB_OFFLINE is set and it is not in the local hub cache"
    except errors.GatedRepoError:
        return "its hub repo is gated: accept its licence on the hub, then log in (`hf auth login` or HF_TOKEN)"
    except errors.RepositoryNotFoundError:
        return "the hub has no such repo (or it is private and you are not logged in)"
    except errors.EntryNotFoundError:
        return f"its hub repo has no {filename}"
    except Exception as error:  # the HTTP library's own connection and timeout errors
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"the hub cannot be reached ({detail})"
    return None
