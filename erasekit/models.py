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
            The prompt strings before image-token expansion (chat template + generation prompt).

        encode(questions: list[str], images: list[Tensor|PIL|None] | Tensor | None = None,
               answers: list[str] | None = None, chat: bool = True) -> dict
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

Without torchvision, HF builds the Qwen processors' video processor lazily and fails; the adapters therefore
only need a tokenizer, an image processor (PIL backend) and a chat template. ``processor`` is the HF processor
when it loads, else a :class:`ProcessorParts` holding those three.

Example::

    adapter = load_model("llava-hf/llava-1.5-7b-hf")
    batch = adapter.encode(["What is in the image?"], images=[pil_image])
    print(adapter.generate(batch, max_new_tokens=20))
"""

from __future__ import annotations

import copy
import functools
import json
import operator
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "ModelAdapter",
    "LlavaAdapter",
    "Qwen25VLAdapter",
    "Qwen3VLAdapter",
    "CausalLMAdapter",
    "ProcessorParts",
    "ADAPTERS",
    "adapter_for",
    "load_model",
    "pick_device_dtype",
]

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------------
# device / dtype: the one place this is decided


def pick_device_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Choose the device and dtype: CUDA + bfloat16 when a GPU is there, else CPU + float32.

    Explicit arguments win; ``dtype`` may be a string such as ``"bfloat16"``.

    >>> pick_device_dtype("cpu")
    (device(type='cpu'), torch.float32)
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        # bf16 halves memory on GPU; on CPU bf16 matmuls are slow and imprecise, so keep float32 there.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        dtype = resolved
    return device, dtype


# ----------------------------------------------------------------------------------------------------------------
# processor parts


@dataclass
class ProcessorParts:
    """What the adapters need from a processor; used when the HF processor cannot be built (no torchvision)."""

    tokenizer: Any
    image_processor: Any = None
    chat_template: str | None = None


def _size_get(size: Any, key: str) -> Any:
    """Read a key from an image processor size (dict or SizeDict); None when absent."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


_RESAMPLE_TO_TORCH = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


def _resample_mode(image_processor: Any) -> str:
    resample = getattr(image_processor, "resample", 3)
    resample = int(getattr(resample, "value", resample))
    if resample not in _RESAMPLE_TO_TORCH:
        raise ValueError(
            f"image processor resample={resample} has no differentiable torch equivalent here; "
            "only bilinear (2) and bicubic (3) are supported"
        )
    return _RESAMPLE_TO_TORCH[resample]


@functools.lru_cache(maxsize=64)
def _pil_weights(in_size: int, out_size: int, mode: str) -> torch.Tensor:
    """(out_size, in_size) float64 resampling matrix computed exactly like PIL's Resample.c (precompute_coeffs).

    PIL's antialiased kernels widen the filter by the downscale factor; bicubic uses a = -0.5.
    """

    def bicubic(x: float) -> float:
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        if x < 2.0:
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return 0.0

    def bilinear(x: float) -> float:
        return max(0.0, 1.0 - abs(x))

    kernel, support = (bicubic, 2.0) if mode == "bicubic" else (bilinear, 1.0)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = torch.tensor([kernel((i - center + 0.5) / filterscale) for i in range(lo, hi)], dtype=torch.float64)
        weights[out, lo:hi] = taps / taps.sum()
    return weights


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    """PIL keeps uint8 between its two passes: round in the forward pass, identity gradient (straight-through)."""
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


def _resize(pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Differentiable resize (B,C,H,W) -> (B,C,height,width) that reproduces PIL's uint8 resize.

    PIL resamples in two 1-D passes and stores uint8 (clipped, rounded) in between; so do we, with the rounding
    as a straight-through estimator (gradients flow as if there were no rounding). A plain
    F.interpolate(antialias=True) skips the intermediate clipping and differs by up to ~25/255 on
    high-frequency images. Pass order: Pillow 13 does the vertical pass first when it shrinks the height while
    the width does not shrink (found empirically, exact on all such cases tried), else horizontal first (the
    Resample.c default); in the remaining case of shrinking both, Pillow sometimes goes vertical first and we
    then differ by a few uint8 steps at isolated pixels. Otherwise matches PIL to 1-2 uint8 steps at isolated
    pixels (PIL's fixed-point coefficients).
    """
    in_h, in_w = pixels.shape[-2:]
    x = pixels

    def horizontal(x: torch.Tensor) -> torch.Tensor:
        if in_w == width:
            return x
        w = _pil_weights(in_w, width, mode).to(device=x.device, dtype=x.dtype)
        return _round_uint8((x @ w.T).clamp(0.0, 1.0))

    def vertical(x: torch.Tensor) -> torch.Tensor:
        if in_h == height:
            return x
        h = _pil_weights(in_h, height, mode).to(device=x.device, dtype=x.dtype)
        return _round_uint8((h @ x).clamp(0.0, 1.0))

    if height < in_h and width >= in_w:
        return horizontal(vertical(x))
    return vertical(horizontal(x))


def _check_pixels(pixels: Any) -> torch.Tensor:
    """Validate a raw-pixel batch (B,3,H,W) float in [0,1]; returns it unchanged."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixels must be a torch.Tensor (B,3,H,W) in [0,1], got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(
            f"pixels must have shape (B,3,H,W) (channels first, RGB), got {tuple(pixels.shape)}; "
            "for a single image use pixels[None], for (B,H,W,3) use pixels.permute(0,3,1,2)"
        )
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a float tensor in [0,1], got dtype {pixels.dtype}; for uint8 use x / 255")
    lo, hi = float(pixels.detach().min()), float(pixels.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"pixel values must lie in [0,1], got range [{lo:.4g}, {hi:.4g}]; divide 0..255 images by 255 and "
            "pass raw (un-normalised) pixels: the adapter normalises them itself"
        )
    return pixels


def _check_pil(image: Any) -> None:
    if getattr(image, "mode", "RGB") != "RGB":
        raise ValueError(
            f"image mode {image.mode!r} is not supported: convert with image.convert('RGB') first "
            "(for RGBA, paste onto a white background to avoid black transparent areas)"
        )


def _pil_to_tensor(image: Any) -> torch.Tensor:
    import numpy as np

    _check_pil(image)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


# ----------------------------------------------------------------------------------------------------------------
# adapters


class ModelAdapter:
    """Base adapter: prompt building, tokenisation with LEFT padding, answers/labels, generation.

    Subclasses set the class attributes below and implement ``pixel_inputs`` / ``_num_image_tokens``.
    """

    family: ClassVar[str] = ""
    layers_path: ClassVar[str] = ""  # attribute path from the HF model to the decoder-layer ModuleList
    model_class_name: ClassVar[str] = ""  # transformers class used by load_model
    image_token: ClassVar[str | None] = None  # the placeholder token the processor expands per image
    fallback_template: ClassVar[str] = "{question}"  # used when no chat template is available
    fallback_image: ClassVar[str] = ""  # what {image} becomes in fallback_template when the row has an image
    plain_image: ClassVar[str] = ""  # image placeholder prefix for chat=False

    def __init__(self, model: nn.Module, processor: Any):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.chat_template = getattr(processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        self.model_id = str(getattr(model.config, "name_or_path", "") or getattr(model, "name_or_path", ""))
        self._layers = operator.attrgetter(self.layers_path)(model)
        if not isinstance(self._layers, nn.ModuleList):
            raise TypeError(f"{type(self).__name__}: model.{self.layers_path} is not a ModuleList of decoder layers")
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer (pass the processor or tokenizer)")

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[nn.Module]:
        """Decoder layers of the language model, index 0..L-1."""
        return list(self._layers)

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        # With device_map="auto" inputs go where the embeddings live, which is what model.device reports.
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_multimodal(self) -> bool:
        return self.image_token is not None

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return int(tok.pad_token_id)
        if tok.eos_token_id is not None:
            return int(tok.eos_token_id)  # Llama tokenisers have no pad token; pads are masked anyway
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, layers={self.num_layers}, d={self.hidden_size})"

    # -- prompts ---------------------------------------------------------------------------------------------
    def _messages(self, question: str, has_image: bool) -> list[dict]:
        content: list[dict] = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": question})
        return [{"role": "user", "content": content}]

    def build_prompts(self, questions: list[str], has_image: list[bool], chat: bool = True) -> list[str]:
        """Prompt strings (one image placeholder per image row, not yet expanded), generation prompt appended."""
        prompts = []
        for question, img in zip(questions, has_image, strict=True):
            if not chat:
                prompts.append((self.plain_image if img else "") + question)
            elif self.chat_template:
                prompts.append(
                    self.tokenizer.apply_chat_template(
                        self._messages(question, img),
                        chat_template=self.chat_template,
                        tokenize=False,
                        add_generation_prompt=True,
                    )
                )
            else:
                prompts.append(self.fallback_template.format(image=self.fallback_image if img else "", question=question))
        return prompts

    # -- images ----------------------------------------------------------------------------------------------
    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable raw pixels (B,3,H,W) in [0,1] -> the model's pixel kwargs."""
        raise ValueError(f"{self.family} model {self.model_id!r} is text-only: it takes no images")

    def _num_image_tokens(self, pixel_kwargs: dict[str, torch.Tensor]) -> list[int]:
        """Number of placeholder tokens each image expands to, in image order."""
        raise NotImplementedError

    def _processor_pixels(self, images: list[Any]) -> dict[str, torch.Tensor]:
        """PIL images through the family's own image processor (the reference preprocessing)."""
        out = self.image_processor(images=images, return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("pixel_values", "image_grid_thw")}

    def _image_kwargs(self, images: list[Any]) -> dict[str, torch.Tensor]:
        """Pixel kwargs for the non-None images; tensors (any in the list) go through the torch path."""
        if all(not isinstance(im, torch.Tensor) for im in images):
            for im in images:
                _check_pil(im)
            return self._processor_pixels(images)
        parts = [self.pixel_inputs((im if isinstance(im, torch.Tensor) else _pil_to_tensor(im))[None]) for im in images]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _split_images(self, images: Any, n: int) -> list[Any]:
        """images argument -> list of length n with None / PIL / Tensor (3,H,W)."""
        if images is None:
            return [None] * n
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            _check_pixels(images)
            if images.shape[0] != n:
                raise ValueError(f"got {images.shape[0]} images for {n} questions; pass one image per question")
            return list(images.unbind(0))
        images = list(images)
        if len(images) != n:
            raise ValueError(f"got {len(images)} images for {n} questions; pass one image (or None) per question")
        for im in images:
            if isinstance(im, torch.Tensor):
                _check_pixels(im[None] if im.ndim == 3 else im)
                if im.ndim != 3:
                    raise ValueError(f"an image tensor in a list must be (3,H,W), got {tuple(im.shape)}")
        return images

    # -- encode ----------------------------------------------------------------------------------------------
    def _extra_sequence_kwargs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-token kwargs some families need besides input_ids/attention_mask (e.g. Qwen's mm_token_type_ids)."""
        return {}

    def _tokenize(self, text: str) -> list[int]:
        # Templates that already write the BOS token (Llama-3) must not get a second one from the tokenizer.
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def encode(
        self,
        questions: list[str],
        images: Any = None,
        answers: list[str] | None = None,
        chat: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Tokenise questions (+ images, + answers) into LEFT-padded model kwargs on the model device.

        Args:
            questions: B question strings.
            images: None, a list of B entries (PIL RGB image, float tensor (3,H,W) in [0,1], or None), or a tensor
                (B,3,H,W) / (3,H,W) in [0,1]. Tensors keep their autograd graph (pixel_values depend on them).
            answers: optional B target strings appended after the generation prompt, followed by eos.
            chat: apply the chat template (True) or feed the raw question (False).

        Returns:
            dict with input_ids (B,T) long, attention_mask (B,T) long, labels (B,T) if answers are given
            (-100 except answer and eos tokens), and for images pixel_values (+ image_grid_thw,
            mm_token_type_ids for Qwen).

        Example::

            batch = adapter.encode(["Who is this?"], images=torch.rand(1, 3, 336, 336))
            logits = adapter.model(**batch).logits  # (1, T, V)
        """
        if isinstance(questions, str):
            raise TypeError("questions must be a list of strings, not a single string")
        n = len(questions)
        if answers is not None and len(answers) != n:
            raise ValueError(f"got {len(answers)} answers for {n} questions")
        image_list = self._split_images(images, n)
        has_image = [im is not None for im in image_list]
        if any(has_image) and not self.is_multimodal:
            raise ValueError(
                f"{self.family} model {self.model_id!r} is text-only: pass images=None, or load a vision-language "
                "model (llava, qwen2_5_vl, qwen3_vl) for image inputs"
            )
        prompts = self.build_prompts(questions, has_image, chat=chat)

        batch: dict[str, torch.Tensor] = {}
        if any(has_image):
            if isinstance(images, torch.Tensor):
                # One batched pass (PGD feeds (k,3,H,W) copies of one image).
                pixel_kwargs = self.pixel_inputs(images if images.ndim == 4 else images[None])
            else:
                pixel_kwargs = self._image_kwargs([im for im in image_list if im is not None])
            counts = iter(self._num_image_tokens(pixel_kwargs))
            expanded = []
            for prompt, img in zip(prompts, has_image):
                n_placeholders = prompt.count(self.image_token)
                if n_placeholders != int(img):
                    raise ValueError(
                        f"prompt has {n_placeholders} {self.image_token!r} placeholders but {int(img)} image(s): "
                        f"the chat template must render exactly one placeholder per image\n{prompt!r}"
                    )
                if img:
                    prompt = prompt.replace(self.image_token, self.image_token * next(counts))
                expanded.append(prompt)
            prompts = expanded
            model_dtype = self.dtype
            batch.update(
                {
                    k: v.to(self.device, model_dtype if v.is_floating_point() else v.dtype)
                    for k, v in pixel_kwargs.items()
                }
            )

        rows = [self._tokenize(p) for p in prompts]
        label_rows = [[IGNORE_INDEX] * len(r) for r in rows]
        if answers is not None:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise ValueError("the tokenizer has no eos token; cannot append answers")
            for i, answer in enumerate(answers):
                ans = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [int(eos)]
                rows[i] = rows[i] + ans
                label_rows[i] = label_rows[i] + ans

        T = max(len(r) for r in rows)
        pad = self.pad_token_id
        # LEFT padding: the last position of every row is then its last real token ("last token" readings).
        input_ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], dtype=torch.long)
        attention_mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        assert bool(attention_mask[:, -1].all()), "left padding failed: a row ends with a pad token"
        batch["input_ids"] = input_ids.to(self.device)
        batch["attention_mask"] = attention_mask.to(self.device)
        batch.update({k: v.to(self.device) for k, v in self._extra_sequence_kwargs(input_ids).items()})
        if answers is not None:
            labels = torch.tensor([[IGNORE_INDEX] * (T - len(r)) + r for r in label_rows], dtype=torch.long)
            batch["labels"] = labels.to(self.device)
        return batch

    # -- generate --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int = 50, **kw: Any) -> list[str]:
        """Greedy decoding; returns the B decoded continuations (new tokens only, special tokens skipped)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        config = copy.deepcopy(self.model.generation_config)
        # Greedy regardless of the checkpoint's sampling defaults (Qwen ships temperature/top_p/top_k).
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.max_new_tokens = max_new_tokens
        config.pad_token_id = self.pad_token_id
        out = self.model.generate(**inputs, generation_config=config, **kw)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 in HF ``llava`` format (LlavaForConditionalGeneration, CLIP tower, Llama/Vicuna LM)."""

    family = "llava"
    layers_path = "model.language_model.layers"
    model_class_name = "LlavaForConditionalGeneration"
    image_token = "<image>"
    fallback_template = "USER: {image}{question} ASSISTANT:"
    fallback_image = "<image>\n"
    plain_image = "<image>\n"

    @property
    def image_size(self) -> tuple[int, int] | None:
        ip = self.image_processor
        crop = getattr(ip, "crop_size", None)
        if getattr(ip, "do_center_crop", False) and crop is not None:
            return int(_size_get(crop, "height")), int(_size_get(crop, "width"))
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
        x = _check_pixels(pixels)
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
            shortest = _size_get(ip.size, "shortest_edge")
            if shortest:
                # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = int(shortest), int(int(shortest) * long / short)
                new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
            else:
                new_h, new_w = int(_size_get(ip.size, "height")), int(_size_get(ip.size, "width"))
            x = _resize(x, new_h, new_w, _resample_mode(ip))
        if getattr(ip, "do_center_crop", False):
            ch, cw = int(_size_get(ip.crop_size, "height")), int(_size_get(ip.crop_size, "width"))
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
    default_side: ClassVar[int] = 448  # a multiple of 28 and 32, so smart_resize leaves 448x448 as it is

    def _geometry(self) -> tuple[int, int, int, int, int]:
        ip = self.image_processor
        patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        min_pixels = _size_get(ip.size, "shortest_edge") or getattr(ip, "min_pixels", None)
        max_pixels = _size_get(ip.size, "longest_edge") or getattr(ip, "max_pixels", None)
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
        x = _check_pixels(pixels)
        patch, merge, temporal, _, _ = self._geometry()
        h, w = self._target_hw(*x.shape[-2:])
        x = _resize(x, h, w, _resample_mode(ip))
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


def _adapter_class(model_type: str) -> type[ModelAdapter]:
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """Wrap an already-loaded HF model with its processor (or tokenizer / ProcessorParts) in the right adapter."""
    return _adapter_class(model.config.model_type)(model, processor)


# ----------------------------------------------------------------------------------------------------------------
# loading

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
    adapter_cls = _adapter_class(config.model_type)
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
