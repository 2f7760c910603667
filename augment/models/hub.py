"""Hugging Face Hub models a job needs, checked before any of them loads.

Without this, a machine that cannot reach the hub (and has no HF_HUB_OFFLINE) spends half a minute in the
libraries' retries per model and then names whichever model it tried first. Here: every hub model of the job
is looked up in the local cache; if one is missing, one request tells whether the hub answers. Missing and
unreachable: one UserError naming every missing model and how to fetch it. All cached but the hub
unreachable: this process goes offline (HF_HUB_OFFLINE), so the libraries load from the cache without retries.
"""

from __future__ import annotations

import os

from augment.errors import UserError


def job_models(
    generator: str | None = None, guide: str | None = None, classifier: str | None = None
) -> list[tuple[str, str, str]]:
    """(what, repo id, file to look for) of each hub model among a job's generator and classifiers."""
    items = []
    from augment.models.guides import hub_repo
    from augment.models.guides.base import hub_id

    if generator and hub_id(generator):
        items.append(("generator", generator, "model_index.json"))
    for what, spec in (("guide", guide), ("classifier", classifier)):
        repo = hub_repo(spec)
        if repo is not None and repo[0] not in {i[1] for i in items}:
            items.append((what, *repo))
    return items


def cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def hub_error(repo: str, timeout: float) -> str | None:
    """None when the hub answers for `repo` within `timeout` seconds, else why not (one line)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo, timeout=timeout)
        return None
    except GatedRepoError:  # the hub answers: the model needs a login and accepted terms
        raise UserError(
            f"{repo!r} is gated on the Hugging Face Hub: log in (`hf auth login`) and accept its terms"
        ) from None
    except RepositoryNotFoundError:  # the hub answers: no such model (or a private one without a login)
        raise UserError(f"{repo!r}: no such model on the Hugging Face Hub (or a private one: log in)") from None
    except Exception as e:  # noqa: BLE001  (httpx/requests network errors: one line)
        detail = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {detail}"[:200]


def check_hub(items: list[tuple[str, str, str]], timeout: float = 5.0) -> str | None:
    """Refuse (UserError) when a needed hub model is neither cached nor reachable; go offline when all are
    cached and the hub does not answer. Returns a note for the user, or None."""
    if not items:
        return None
    missing = [(what, repo) for what, repo, filename in items if not cached(repo, filename)]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    reason = "HF_HUB_OFFLINE is set" if offline else hub_error((missing or items)[0][1], timeout)
    if reason is None:
        return None
    if missing:
        names = "; ".join(f"{what} {repo!r}" for what, repo in missing)
        first = missing[0][1]
        raise UserError(
            f"not in the local Hugging Face cache, and the hub is unreachable ({reason}): {names}. Fetch each where "
            f"you have network (`hf download {first} --local-dir DIR`) and pass the directory instead "
            "(the generator DIR, the guide hf:DIR)"
        )
    if not offline:
        import huggingface_hub.constants

        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        return f"the hub is unreachable ({reason}): models load from the local cache"
    return None
