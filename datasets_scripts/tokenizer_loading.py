"""Loading a tokenizer for PeaPOD's tools: checked first, with installed classes only, never remote code.

`check_tokenizer_name` runs before anything expensive: a path must be a tokenizer folder, and a Hub name must be
in the local cache or the Hub must answer within seconds. Offline, transformers would otherwise retry for about a
minute and end in a traceback; here the user is told at once to pass a local tokenizer folder.

`load_tokenizer` loads with `trust_remote_code=False`: an `auto_map` in a downloaded `tokenizer_config.json` (or a
checkpoint's `config.json`) never runs code. For a PeaPOD checkpoint folder the config is read with the installed
`PeaPODConfig` and handed to `AutoTokenizer`, so transformers does not try (and ask) to import the folder's
`configuration_peapod.py` just to learn the model type. Remote code is for people without this package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from configuration_peapod import PeaPODConfig, PeaPODInputError

LOCAL_TOKENIZER_HINT = "pass a local tokenizer folder instead, e.g. --tokenizer ../shared/tokenizers/t5"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


def looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a folder (it exists, or is spelled like a path) rather than a Hub id."""
    return (os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def check_folder_or_hub_name(name: str, flag: str, files: tuple[str, ...], hint: str) -> None:
    """Raise PeaPODInputError unless `name` is a folder holding one of `files`, a Hub repo with one of them in the
    local cache, or a Hub id while the Hub answers (one short request; `hint` says what to do instead)."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise PeaPODInputError(f"{flag} {name}: no such folder ({hint})")
        if not any((path / file).is_file() for file in files):
            raise PeaPODInputError(f"{flag} {name}: the folder holds none of {', '.join(files)}")
        return
    from huggingface_hub import constants, get_session, try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(name, file), str) for file in files):
        return
    if constants.HF_HUB_OFFLINE:
        raise PeaPODInputError(
            f"{flag} {name}: not a local folder, not in the Hugging Face cache, and HF_HUB_OFFLINE is set; {hint}"
        )
    try:  # one short request instead of transformers' minute of retries when the machine is offline
        get_session().head(f"{constants.ENDPOINT}/api/models/{name}", timeout=5)
    except Exception as error:  # noqa: BLE001  (the HTTP client's errors share no public base class)
        raise PeaPODInputError(
            f"{flag} {name}: not a local folder and {constants.ENDPOINT} cannot be reached to download it "
            f"({type(error).__name__}); {hint}"
        ) from None


def check_tokenizer_name(name: str, flag: str = "--tokenizer") -> None:
    """Raise PeaPODInputError unless `name` is a tokenizer folder, a cached Hub tokenizer or a reachable Hub id."""
    check_folder_or_hub_name(name, flag, TOKENIZER_FILES, LOCAL_TOKENIZER_HINT)


def load_tokenizer(name: str, flag: str = "--tokenizer"):
    """`AutoTokenizer.from_pretrained(name)` with the installed classes only (see the module docstring)."""
    from transformers import AutoTokenizer

    check_tokenizer_name(name, flag)
    config = None
    config_file = Path(name).expanduser() / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, UnicodeDecodeError, AttributeError):
            model_type = None  # not our config; AutoTokenizer reads it (without running code) or ignores it
        if model_type == "peapod":
            config = PeaPODConfig.from_pretrained(str(config_file.parent))
    try:
        return AutoTokenizer.from_pretrained(name, config=config, trust_remote_code=False)
    except ValueError as error:
        if "trust_remote_code" in str(error) or "custom code" in str(error):
            raise PeaPODInputError(
                f"{flag} {name}: its tokenizer_config.json asks to run custom code (an auto_map); PeaPOD's tools never "
                "run code from a tokenizer or checkpoint folder: use a plain tokenizer folder"
            ) from None
        raise
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PeaPODInputError(f"{flag} {name}: cannot load a tokenizer from it ({first_line})") from None
