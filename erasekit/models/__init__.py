"""Model adapters: the one place where model families differ.

INTERFACE CONTRACT (other modules rely on exactly this):

    adapter = load_model(path_or_hub_id, device=None, dtype=None, device_map=None)  # adapter from config.model_type
    adapter = adapter_for(model, processor)                                         # wrap an already-loaded model
    device, dtype = pick_device_dtype(device=None, dtype=None)                      # the one device/dtype policy

    class ModelAdapter:
        model, processor, tokenizer, image_processor
        family: str                       # "llava" | "qwen2_5_vl" | "qwen3_vl" | "causal_lm"
        model_id: str                     # name_or_path, recorded in artifacts
        num_layers: int                   # L decoder layers
        hidden_size: int                  # d
        device, dtype
        layers -> list[nn.Module]         # decoder layers of the language model, index 0..L-1
        image_size -> (H, W) | None       # raw pixel size for which pixel_inputs does no resampling (None: text-only)
        is_multimodal: bool

        build_prompts(questions, has_image, chat=True) -> list[str]
            The prompt strings before image-token expansion (chat template + generation prompt; chat=False: the
            plain image prefix + question; chat="raw": the questions as given).

        encode(questions: list[str], images: list[Tensor|PIL|None|list[Tensor|PIL]] | Tensor | None = None,
               answers: list[str] | None = None, chat: bool | str = True) -> dict
            Builds chat prompts (the family's template, generation prompt appended), LEFT padded, returns model
            kwargs: input_ids (B,T), attention_mask (B,T), and for images the family's pixel kwargs
            (pixel_values; image_grid_thw and mm_token_type_ids for Qwen). Images may be PIL (RGB only; other modes
            raise) or float tensors (3,H,W)/(B,3,H,W) in [0,1]; tensors go through the differentiable pixel path so
            gradients reach them (PIL images go through the family's own image processor). If answers are given,
            they are appended after the generation prompt (+ eos) and "labels" (B,T) are returned with -100
            everywhere except answer tokens (for PGD / training losses). Asserts the last position of every row is
            a real token.

        pixel_inputs(pixels: Tensor (B,3,H,W) in [0,1]) -> dict
            Differentiable raw-pixel -> model pixel kwargs (pad/resize/crop/normalise for LLaVA; smart-resize,
            normalise and patchify + image_grid_thw for Qwen), matching the family's (PIL) image processor:
            exactly when no resampling happens (pixels of size image_size), else to 1-2 uint8 steps (the resize
            replays PIL's two uint8 passes; rounding is straight-through so gradients still flow).

        generate(batch: dict, max_new_tokens=50, **kw) -> list[str]
            Greedy, returns only the new tokens decoded (skip special tokens).

Layer convention: layers[l] is decoder layer l; erasekit reads and steers the residual stream at the INPUT of
layers[l] (see erasekit.hooks), which equals HF's ``output_hidden_states[l]`` except for Qwen3-VL's deepstack
layers, where the layer input also contains the visual features added after layer l-1 (visual positions only).

Without torchvision the HF processor may not load; ``processor`` is then a :class:`ProcessorParts` (tokenizer,
image processor, chat template), see :mod:`erasekit.models.loading`.

Family knowledge the training baselines read (class attributes, no model needed: ``adapter_class(model_type)``):
``module_role(path)`` -> 'lm_head' | 'projector' | 'vision' | 'language' (from ``vision_keys`` /
``projector_keys``) and ``mlp_in`` / ``mlp_out`` (child names of an MLP block's projections).

The package, one concept per module: ``devices`` (device/dtype policy), ``pixels`` (PIL-exact differentiable
pixel preprocessing and checks), ``adapter`` (the ModelAdapter base), ``families`` (one adapter per family and the
model_type registry), ``loading`` (load_model, processors, chat templates), ``protocol`` (:class:`Adapter`, the
typed interface the rest of erasekit uses).

Example::

    adapter = load_model("llava-hf/llava-1.5-7b-hf")
    batch = adapter.encode(["What is in the image?"], images=[pil_image])
    print(adapter.generate(batch, max_new_tokens=20))
"""

from __future__ import annotations

from .adapter import IGNORE_INDEX, ModelAdapter
from .devices import pick_device_dtype
from .families import (
                       ADAPTERS,
                       CausalLMAdapter,
                       LlavaAdapter,
                       Qwen3VLAdapter,
                       Qwen25VLAdapter,
                       adapter_class,
                       adapter_for,
)
from .loading import ProcessorParts, load_model
from .protocol import Adapter

__all__ = [
    "Adapter",
    "ModelAdapter",
    "LlavaAdapter",
    "Qwen25VLAdapter",
    "Qwen3VLAdapter",
    "CausalLMAdapter",
    "ProcessorParts",
    "ADAPTERS",
    "IGNORE_INDEX",
    "adapter_class",
    "adapter_for",
    "load_model",
    "pick_device_dtype",
]
