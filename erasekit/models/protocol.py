"""The adapter interface the rest of erasekit relies on, as a typed :class:`Adapter` protocol.

Every :class:`~erasekit.models.adapter.ModelAdapter` satisfies it; so may a test double. Code outside
``erasekit.models`` should need nothing else of an adapter.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Adapter"]


@runtime_checkable
class Adapter(Protocol):
    """What erasekit uses of a model adapter (see the contract in :mod:`erasekit.models`)."""

    model: nn.Module  # the HF model
    processor: Any  # HF processor, tokenizer, or ProcessorParts
    tokenizer: Any
    model_id: str  # name_or_path, recorded in artifacts
    family: ClassVar[str]  # "llava" | "qwen2_5_vl" | "qwen3_vl" | "causal_lm"
    mlp_in: ClassVar[tuple[str, ...]]  # child names of an MLP block's input projections
    mlp_out: ClassVar[tuple[str, ...]]  # ... and of its output projection (input = the neuron layer)

    @property
    def layers(self) -> list[nn.Module]:
        """Decoder layers of the language model, index 0..L-1."""
        ...

    @property
    def num_layers(self) -> int:
        """L, the number of decoder layers."""
        ...

    @property
    def hidden_size(self) -> int:
        """d, the width of the residual stream."""
        ...

    @property
    def device(self) -> torch.device:
        """Where inputs go (the embeddings' device)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype."""
        ...

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Raw pixel size for which the pixel path does no resampling (None: text-only)."""
        ...

    @property
    def is_multimodal(self) -> bool:
        """Whether the model takes images."""
        ...

    def module_role(self, name: str) -> str:
        """'lm_head' | 'projector' | 'vision' | 'language' for a module path."""
        ...

    def build_prompts(self, questions: list[str], has_image: list[bool], chat: bool | str = True) -> list[str]:
        """Prompt strings before image-token expansion, generation prompt appended (``chat="raw"``: as given)."""
        ...

    def encode(self, questions: list[str], images: Any = None, answers: list[str] | None = None,
               chat: bool | str = True) -> dict[str, torch.Tensor]:
        """LEFT-padded model kwargs on the model device (+ ``labels`` when ``answers`` are given); ``chat="raw"``:
        each question is the whole prompt with one image placeholder per image of its row (an entry of ``images``
        may be a list of images)."""
        ...

    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int = 50, **kw: Any) -> list[str]:
        """Greedy decoding: the B decoded continuations."""
        ...
