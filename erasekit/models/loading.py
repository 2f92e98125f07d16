"""Loading a model from a local folder or hub id: config -> family adapter, weights, processor and chat template.

Without torchvision, HF builds the Qwen processors' video processor lazily and fails; the adapters therefore
only need a tokenizer, an image processor (PIL backend) and a chat template. ``processor`` is the HF processor
when it loads, else a :class:`ProcessorParts` holding those three.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from .adapter import ModelAdapter
from .devices import pick_device_dtype
from .families import adapter_class

__all__ = ["ProcessorParts", "load_model"]


@dataclass
class ProcessorParts:
    """What the adapters need from a processor; used when the HF processor cannot be built (no torchvision)."""

    tokenizer: Any
    image_processor: Any = None
    chat_template: str | None = None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _missing(path_or_id: str, cause: Exception | None = None) -> FileNotFoundError:
    return FileNotFoundError(
        f"cannot load {path_or_id!r}: it is not a local folder and could not be read from the Hugging Face hub "
        "or cache (this machine may be offline). Download it where there is network, e.g. "
        f"`huggingface-cli download {path_or_id} --local-dir <DIR>`, copy <DIR> here and pass its path, or set "
        f"HF_HOME to a cache that holds it. Cause: {cause!r}"
    )


def _read_chat_template(path_or_id: str) -> str | None:
    """The processor-level chat template (chat_template.jinja / .json / processor_config.json), if any."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        try:
            file = cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            file = None
        if not file:
            continue
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
        if name.endswith(".jinja"):
            return text
        template = json.loads(text).get("chat_template")
        if template:
            return template
    return None


def _load_processor(path_or_id: str, adapter_cls: type[ModelAdapter]) -> Any:
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if not adapter_cls.image_token:
        return AutoTokenizer.from_pretrained(path_or_id)
    try:
        return AutoProcessor.from_pretrained(path_or_id)
    except (ImportError, ValueError, TypeError, AttributeError):
        # Qwen processors also build a torchvision-only video processor; we only need these three parts.
        return ProcessorParts(
            tokenizer=AutoTokenizer.from_pretrained(path_or_id),
            image_processor=AutoImageProcessor.from_pretrained(path_or_id),
            chat_template=_read_chat_template(path_or_id),
        )


def load_model(
    path_or_id: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> ModelAdapter:
    """Load model + processor from a local folder or hub id and wrap them in the family adapter.

    Args:
        path_or_id: local folder (config.json, weights, tokenizer/processor files) or hub id ("org/name").
        device, dtype: see :func:`pick_device_dtype` (default CUDA + bf16 if available else CPU + float32).
        device_map: e.g. "auto" to shard across GPUs with accelerate; then ``device`` is ignored.

    Raises:
        FileNotFoundError: the folder does not exist, or the hub id cannot be fetched (offline), with what to do.
        ValueError: the model_type has no adapter.
    """
    import transformers
    from transformers import AutoConfig

    path_or_id = os.fspath(path_or_id)
    local = os.path.isdir(path_or_id)
    if not local:
        # A hub id is "name" or "org/name"; anything else (./x, /a/b, a/b/c, x\\y) is meant as a local folder.
        if path_or_id.startswith((".", "/", "~")) or not _HUB_ID.match(path_or_id):
            raise FileNotFoundError(
                f"model folder {path_or_id!r} does not exist; pass a folder holding config.json, the weights and "
                "the tokenizer/processor files (or a hub id like 'llava-hf/llava-1.5-7b-hf')"
            )
    try:
        config = AutoConfig.from_pretrained(path_or_id)
    except OSError as err:
        raise _missing(path_or_id, err) from err
    adapter_cls = adapter_class(config.model_type)
    device, dtype = pick_device_dtype(device, dtype)
    model_cls = getattr(transformers, adapter_cls.model_class_name)
    try:
        model = model_cls.from_pretrained(path_or_id, dtype=dtype, device_map=device_map)
        processor = _load_processor(path_or_id, adapter_cls)
    except OSError as err:
        raise _missing(path_or_id, err) from err
    if device_map is None:
        model = model.to(device)
    model.eval()
    return adapter_cls(model, processor)
