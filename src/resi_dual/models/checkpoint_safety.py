"""No checkpoint's code ever runs: the checks every model loader makes before and while it reads one.

* :data:`NO_REMOTE_CODE` is passed to every transformers ``from_pretrained`` (models, configs, image
  processors, tokenizers), so transformers never asks on a terminal whether to run a repository's code.
* :func:`refuse_remote_code` refuses a local checkpoint directory whose configs name custom code
  (an ``auto_map``), naming the file, instead of silently loading a default class in its place.
* :func:`pickle_guard` turns a weights file that torch's ``weights_only`` unpickler rejects (a
  ``pytorch_model.bin`` carrying code or arbitrary objects) into one line naming it.
"""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from resi_dual.errors import ResiDualError

#: keyword arguments for every transformers ``from_pretrained`` call
NO_REMOTE_CODE: dict = {"trust_remote_code": False}

#: the JSON files in which transformers looks for ``auto_map`` (custom classes shipped as code)
CODE_CONFIGS = ("config.json", "preprocessor_config.json", "processor_config.json", "image_processor_config.json",
                "video_preprocessor_config.json", "tokenizer_config.json", "feature_extractor_config.json")


def _has_auto_map(obj) -> bool:
    """True if ``auto_map`` appears at the top level or in a sub-config (vision_config …)."""
    if not isinstance(obj, dict):
        return False
    return "auto_map" in obj or any(_has_auto_map(v) for v in obj.values() if isinstance(v, dict))


def refuse_remote_code(source: str | Path, spec: str | None = None) -> None:
    """Raise ResiDualError if the local checkpoint directory ``source`` ships custom code.

    Checks every file of :data:`CODE_CONFIGS` present for an ``auto_map``, and any ``*.py`` file
    (a hub repository's custom code). A hub id (not a directory) is checked after its config
    is fetched, by :func:`refuse_remote_config`.
    """
    root = Path(source).expanduser()
    if not root.is_dir():
        return
    what = repr(spec) if spec else str(root)
    for name in CODE_CONFIGS:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ResiDualError(f"{what}: {path} is not a readable JSON file ({type(e).__name__})") from None
        if _has_auto_map(data):
            raise ResiDualError(f"{what}: {path} has an auto_map (custom code the checkpoint would run); "
                                "refusing to load it — resi-dual never runs a checkpoint's code")


def refuse_remote_config(config, spec: str, source: str) -> None:
    """Raise ResiDualError if a loaded transformers config carries an ``auto_map`` (hub checkpoints)."""
    if getattr(config, "auto_map", None):
        raise ResiDualError(f"{spec!r}: the config.json of {source} has an auto_map (custom code the checkpoint would run); "
                            "refusing to load it — resi-dual never runs a checkpoint's code")


def _pickle_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [pickle.UnpicklingError]
    try:
        import _pickle

        errors.append(_pickle.UnpicklingError)
    except ImportError:  # pragma: no cover - CPython always has it
        pass
    return tuple(errors)


@contextmanager
def pickle_guard(spec: str, source: str | Path) -> Iterator[None]:
    """Turn a pickled weights file refused by torch's ``weights_only`` loader into one line."""
    try:
        yield
    except _pickle_errors() as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ResiDualError(f"{spec!r}: a weights file in {source} is a pickle holding more than tensors "
                            f"(refused by torch's weights_only loader: {first}); convert it to safetensors") from None
    except RuntimeError as e:
        if "weights_only" not in str(e) and "Weights only load failed" not in str(e):
            raise
        raise ResiDualError(f"{spec!r}: a weights file in {source} is a pickle holding more than tensors "
                            "(refused by torch's weights_only loader); convert it to safetensors") from None
