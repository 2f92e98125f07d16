"""The model families: one adapter class per family, and the registry from ``config.model_type`` to adapter."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .adapter import ModelAdapter
from .pixels import check_pixels, resample_mode, resize, size_get

__all__ = ["LlavaAdapter", "Qwen25VLAdapter", "Qwen3VLAdapter", "CausalLMAdapter", "ADAPTERS", "adapter_class",
           "adapter_for"]


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 in HF ``llava`` format (LlavaForConditionalGeneration, CLIP tower, Llama/Vicuna LM)."""

    family = "llava"
    layers_path = "model.language_model.layers"
    model_class_name = "LlavaForConditionalGeneration"
    image_token = "<image>"
    fallback_template = "USER: {image}{question} ASSISTANT:"
    fallback_image = "<image>\n"
    plain_image = "<image>\n"
    vision_keys = ("vision_tower",)  # model.vision_tower.vision_model...: CLIP, whose MLPs are fc1 -> fc2
    projector_keys = ("multi_modal_projector",)
    mlp_in = ("gate_proj", "up_proj", "fc1")
    mlp_out = ("down_proj", "fc2")

    @property
    def image_size(self) -> tuple[int, int] | None:
        ip = self.image_processor
        crop = getattr(ip, "crop_size", None)
        if getattr(ip, "do_center_crop", False) and crop is not None:
            return int(size_get(crop, "height")), int(size_get(crop, "width"))
        size = self.model.config.vision_config.image_size
        return int(size), int(size)

    def _num_image_tokens(self, pixel_kwargs: dict[str, torch.Tensor]) -> list[int]:
        cfg = self.model.config
        patch = cfg.vision_config.patch_size
        h, w = pixel_kwargs["pixel_values"].shape[-2:]
        # CLIP prepends a CLS token; the "default" strategy drops it, "full" keeps it.
        n = (h // patch) * (w // patch) + (1 if cfg.vision_feature_select_strategy == "full" else 0)
        return [n] * pixel_kwargs["pixel_values"].shape[0]

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,3,H,W) in [0,1] -> {"pixel_values": (B,3,crop_h,crop_w)}: [pad to square], resize, crop, normalise.

        Same steps as CLIPImageProcessor / LlavaImageProcessor, in torch so gradients reach ``pixels``.
        """
        ip = self.image_processor
        x = check_pixels(pixels)
        mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if getattr(ip, "do_pad", False):
            # LlavaImageProcessor(do_pad=True): original LLaVA "pad" aspect mode, background = int(mean * 255).
            h, w = x.shape[-2:]
            side = max(h, w)
            bg = torch.tensor([int(m * 255) / 255 for m in ip.image_mean], dtype=x.dtype, device=x.device)
            canvas = bg.view(1, 3, 1, 1).expand(x.shape[0], 3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, :, top : top + h, left : left + w] = x
            x = canvas
        if getattr(ip, "do_resize", True):
            h, w = x.shape[-2:]
            shortest = size_get(ip.size, "shortest_edge")
            if shortest:
                # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = int(shortest), int(int(shortest) * long / short)
                new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
            else:
                new_h, new_w = int(size_get(ip.size, "height")), int(size_get(ip.size, "width"))
            x = resize(x, new_h, new_w, resample_mode(ip))
        if getattr(ip, "do_center_crop", False):
            ch, cw = int(size_get(ip.crop_size, "height")), int(size_get(ip.crop_size, "width"))
            h, w = x.shape[-2:]
            if ch > h or cw > w:
                raise ValueError(f"image {h}x{w} is smaller than the crop {ch}x{cw}; resize it up first")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, :, top : top + ch, left : left + cw]
        if not getattr(ip, "do_rescale", True):
            x = x * 255.0  # the processor would then see 0..255 values
        elif getattr(ip, "rescale_factor", 1 / 255) != 1 / 255:
            x = x * 255.0 * ip.rescale_factor
        if getattr(ip, "do_normalize", True):
            x = (x - mean) / std
        return {"pixel_values": x}


class _QwenVLAdapter(ModelAdapter):
    """Shared Qwen-VL logic: smart resize + patchify into flat patches with image_grid_thw."""

    layers_path = "model.language_model.layers"
    image_token = "<|image_pad|>"
    fallback_image = "<|vision_start|><|image_pad|><|vision_end|>"
    plain_image = "<|vision_start|><|image_pad|><|vision_end|>"
    vision_keys = ("visual.",)  # model.visual.{patch_embed,blocks}
    projector_keys = ("merger",)  # model.visual.merger (+ Qwen3-VL's deepstack_merger_list)
    default_side: ClassVar[int] = 448  # a multiple of 28 and 32, so smart_resize leaves 448x448 as it is

    def _geometry(self) -> tuple[int, int, int, int, int]:
        ip = self.image_processor
        patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        min_pixels = size_get(ip.size, "shortest_edge") or getattr(ip, "min_pixels", None)
        max_pixels = size_get(ip.size, "longest_edge") or getattr(ip, "max_pixels", None)
        return patch, merge, temporal, int(min_pixels), int(max_pixels)

    def _target_hw(self, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        patch, merge, _, min_pixels, max_pixels = self._geometry()
        return smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self._target_hw(self.default_side, self.default_side)

    def _num_image_tokens(self, pixel_kwargs: dict[str, torch.Tensor]) -> list[int]:
        merge = int(self.image_processor.merge_size)
        return [int(n) for n in (pixel_kwargs["image_grid_thw"].prod(-1) // merge**2).tolist()]

    def _extra_sequence_kwargs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # M-RoPE positions are computed from mm_token_type_ids (1 = image token), as the HF processor returns it.
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        return {"mm_token_type_ids": (input_ids == image_id).long()}

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,3,H,W) in [0,1] -> {"pixel_values": (B*gh*gw, 3*T*p*p), "image_grid_thw": (B,3)}.

        smart_resize to multiples of patch*merge, normalise, duplicate each frame temporal_patch_size times and
        flatten patches in the processor's order (merge windows contiguous, features ordered C, T, p, p).
        """
        ip = self.image_processor
        x = check_pixels(pixels)
        patch, merge, temporal, _, _ = self._geometry()
        h, w = self._target_hw(*x.shape[-2:])
        x = resize(x, h, w, resample_mode(ip))
        if not getattr(ip, "do_rescale", True):
            x = x * 255.0
        if getattr(ip, "do_normalize", True):
            mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        b, c = x.shape[:2]
        gh, gw = h // patch, w // patch
        x = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
        # A still image is a clip of temporal_patch_size identical frames.
        x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
        pixel_values = x.reshape(b * gh * gw, c * temporal * patch * patch)
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=x.device)
        return {"pixel_values": pixel_values, "image_grid_thw": grid}


class Qwen25VLAdapter(_QwenVLAdapter):
    """Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)."""

    family = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    fallback_template = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n"
    )


class Qwen3VLAdapter(_QwenVLAdapter):
    """Qwen3-VL (Qwen3VLForConditionalGeneration). Deepstack visual features are added to the residual stream
    after layers 0..k-1 return, so the INPUT of layer l (what erasekit reads/steers) includes them."""

    family = "qwen3_vl"
    model_class_name = "Qwen3VLForConditionalGeneration"
    fallback_template = "<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n"
    mlp_in = ("gate_proj", "up_proj", "linear_fc1")  # the vision blocks' MLPs are linear_fc1 -> linear_fc2
    mlp_out = ("down_proj", "linear_fc2")

    def layers_chain_from(self, first: int) -> bool:
        """DeepStack adds visual features to the outputs of the first ``len(deepstack_visual_indexes)`` decoder
        layers, outside the layers: from ``first`` on the layers chain directly only past those."""
        n = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        return first >= n


class CausalLMAdapter(ModelAdapter):
    """Plain decoder-only causal LM (Llama, Qwen2, ...): text only."""

    family = "causal_lm"
    layers_path = "model.layers"
    model_class_name = "AutoModelForCausalLM"

    def _messages(self, question: str, has_image: bool) -> list[dict]:
        return [{"role": "user", "content": question}]


# config.model_type -> adapter; the only place the family is decided.
ADAPTERS: dict[str, type[ModelAdapter]] = {
    "llava": LlavaAdapter,
    "qwen2_5_vl": Qwen25VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "llama": CausalLMAdapter,
    "qwen2": CausalLMAdapter,
    "qwen3": CausalLMAdapter,
    "mistral": CausalLMAdapter,
}


def adapter_class(model_type: str) -> type[ModelAdapter]:
    """The adapter class of a ``config.model_type`` (its family knowledge is class-level: no model needed)."""
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """Wrap an already-loaded HF model with its processor (or tokenizer / ProcessorParts) in the right adapter."""
    return adapter_class(model.config.model_type)(model, processor)

