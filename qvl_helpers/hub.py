"""Sharing an export or an adapter on the Hugging Face Hub (``qvl push``).

Nothing is uploaded unless asked for by name. The repository is private unless ``public`` is
set (an existing public repository is refused unless ``public``). The token comes from
``HF_TOKEN`` (or the login stored by ``hf auth login`` / the notebook
widget); it is handed to ``huggingface_hub`` and never printed, logged or written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, ModelError

UNVERIFIED = "UNVERIFIED.txt"


def push_folder(folder: str | Path, repo_id: str, *, public: bool = False,
                token: str | None = None) -> str:
    """Create ``repo_id`` (private unless ``public``) if needed and upload ``folder`` to it;
    returns the repository's URL.

    Raises:
        ConfigError: the folder is not a model or adapter folder, is marked unverified, the
            repository name is not ``user/name``, there is no token, or the Hub is switched off
            (``HF_HUB_OFFLINE``): all before anything is sent.
        ModelError: the Hub refused (no token, no permission, no network); the message never
            contains the token.
    """
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .outputs import read_json

    folder = Path(folder)
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise ConfigError("this is neither an exported model nor an adapter.", file=folder,
                          fix="push outputs/export/NAME or outputs/runs/NAME/adapter.")
    info = read_json(folder / "export.json")
    if (folder / "config.json").is_file() and (not info or info.get("verified") is not True
                                               or (folder / UNVERIFIED).is_file()):
        raise ConfigError("this model folder is not a verified export (see export.json and "
                          "UNVERIFIED.txt).", file=folder,
                          fix="export it with qvl export (or check it with qvl export --out "
                              "FOLDER --check-only) first.")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"{repo_id!r} is not a repository name.",
                          fix="use your-user-name/model-name.")
    secret = usable_token(token)
    api = HfApi(token=secret)
    try:
        made = api.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
        private = getattr(api.repo_info(repo_id), "private", not public) if made else not public
        if private is False and not public:
            raise ConfigError(f"{repo_id} already exists and is public: nothing was uploaded.",
                              fix="make it private on the Hub first, choose another name, or "
                                  "pass --public if it is meant to be public.")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload from the Qwen2.5-VL fine-tuning course")
    except (HfHubHTTPError, httpx.HTTPError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        if secret:
            reason = reason.replace(secret, "***")
        raise ModelError(f"the Hub refused the upload ({reason}).", file=folder,
                         fix="set HF_TOKEN to a token with write access (or run `hf auth "
                             "login`), check the repository name and your network.") from None
    return f"https://huggingface.co/{repo_id}"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` switches the Hub off (1, true, yes, on: as huggingface_hub
    reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def usable_token(token: str | None = None) -> str:
    """The token to upload with: ``token``, else ``HF_TOKEN``, else the stored login.

    Raises:
        ConfigError: the Hub is switched off, or there is no token (nothing was sent).
    """
    from huggingface_hub import get_token

    if is_offline():
        raise ConfigError("HF_HUB_OFFLINE is set, so the Hub is switched off: nothing was sent.",
                          fix="unset HF_HUB_OFFLINE (or set it to 0) where you have a network, "
                              "then push again.")
    secret = token or get_token()
    if not secret:
        raise ConfigError("there is no Hugging Face token (HF_TOKEN is not set and no login is "
                          "stored): nothing was sent.",
                          fix="set HF_TOKEN to a token with write access (or run `hf auth "
                              "login`), then push again.")
    return secret
