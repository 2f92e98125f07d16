"""The base model adapter: prompt building, tokenisation with LEFT padding, answers/labels, images, generation.

The families (:mod:`erasekit.models.families`) set its class attributes and implement the image geometry.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, ClassVar

import torch
from torch import nn

from .pixels import check_pil, check_pixels, pil_to_tensor

__all__ = ["IGNORE_INDEX", "ModelAdapter"]

IGNORE_INDEX = -100  # label of the positions a loss ignores (everything but the answer tokens)


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
    # Where a module sits, from its path (read by the training baselines): substrings of the vision tower's and of
    # the vision-language projector's module paths (the projector is checked first), and the child names of an MLP
    # block's input projections and of its output projection (whose input is the MLP's neuron layer). The
    # defaults are the Llama-style decoder MLP every family's language model has.
    vision_keys: ClassVar[tuple[str, ...]] = ()
    projector_keys: ClassVar[tuple[str, ...]] = ()
    mlp_in: ClassVar[tuple[str, ...]] = ("gate_proj", "up_proj")
    mlp_out: ClassVar[tuple[str, ...]] = ("down_proj",)

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
    @classmethod
    def module_role(cls, name: str) -> str:
        """'lm_head' | 'projector' | 'vision' | 'language' for a module path of this family's model."""
        if name == "lm_head" or name.endswith(".lm_head"):
            return "lm_head"
        if any(k in name for k in cls.projector_keys):
            return "projector"
        if any(k in name for k in cls.vision_keys):
            return "vision"
        return "language"

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

    def build_prompts(self, questions: list[str], has_image: list[bool], chat: bool | str = True) -> list[str]:
        """Prompt strings (one image placeholder per image row, not yet expanded), generation prompt appended.

        ``chat``: True = the chat template (or ``fallback_template``), False = ``plain_image`` + the question,
        ``"raw"`` = the question itself is the complete prompt (its own image placeholders, no template, no prefix).
        """
        if chat == "raw":
            return list(questions)
        if not isinstance(chat, bool):
            raise ValueError(f"chat must be True, False or 'raw', got {chat!r}")
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
                prompts.append(
                    self.fallback_template.format(image=self.fallback_image if img else "", question=question)
                )
        return prompts

    # -- images ----------------------------------------------------------------------------------------------
    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable raw pixels (B,3,H,W) in [0,1] -> the model's pixel kwargs."""
        raise ValueError(f"{self.family} model {self.model_id!r} is text-only: it takes no images")

    def layers_chain_from(self, first: int) -> bool:
        """Whether decoder layer ``first`` and those after it feed each other directly (layer j's output is layer
        j+1's input, nothing added in between): what ``steer(read="frozen")``'s fork relies on. True here;
        families that write into the stream between layers override it."""
        return True

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
                check_pil(im)
            return self._processor_pixels(images)
        parts = [self.pixel_inputs((im if isinstance(im, torch.Tensor) else pil_to_tensor(im))[None]) for im in images]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _split_images(self, images: Any, n: int) -> list[Any]:
        """images argument -> list of length n with None / PIL / Tensor (3,H,W) / list of PIL or Tensor (3,H,W)."""
        if images is None:
            return [None] * n
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            check_pixels(images)
            if images.shape[0] != n:
                raise ValueError(f"got {images.shape[0]} images for {n} questions; pass one image per question")
            return list(images.unbind(0))
        images = list(images)
        if len(images) != n:
            raise ValueError(f"got {len(images)} images for {n} questions; pass one image (or None) per question")
        for entry in images:
            for im in entry if isinstance(entry, (list, tuple)) else [entry]:
                if isinstance(im, torch.Tensor):
                    check_pixels(im[None] if im.ndim == 3 else im)
                    if im.ndim != 3:
                        raise ValueError(f"an image tensor in a list must be (3,H,W), got {tuple(im.shape)}")
                elif im is None and entry is not im:
                    raise ValueError("a row's list of images must not contain None")
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
        chat: bool | str = True,
    ) -> dict[str, torch.Tensor]:
        """Tokenise questions (+ images, + answers) into LEFT-padded model kwargs on the model device.

        Args:
            questions: B question strings.
            images: None, a list of B entries (PIL RGB image, float tensor (3,H,W) in [0,1], None, or a list/tuple
                of such images: several images for one prompt, one per placeholder in order), or a tensor
                (B,3,H,W) / (3,H,W) in [0,1]. Tensors keep their autograd graph (pixel_values depend on them).
            answers: optional B target strings appended after the generation prompt, followed by eos.
            chat: apply the chat template (True), prefix ``plain_image`` to the question (False), or ``"raw"``: each
                question is the complete prompt, holding one ``image_token`` placeholder per image of its row
                (e.g. MLLMU-Bench's hand-written ``"USER: <image>\\n...ASSISTANT:"`` few-shot prompts; for Qwen
                write ``<|vision_start|><|image_pad|><|vision_end|>``). Each placeholder is expanded with the
                token count of its own image. A prompt whose placeholder count differs from its number of images
                raises ValueError (chat True / False render one placeholder per image, so a row may hold a list
                of several images only with ``"raw"``).

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
        row_images = [list(im) if isinstance(im, (list, tuple)) else ([] if im is None else [im]) for im in image_list]
        n_images = [len(r) for r in row_images]
        has_image = [k > 0 for k in n_images]
        if any(has_image) and not self.is_multimodal:
            raise ValueError(
                f"{self.family} model {self.model_id!r} is text-only: pass images=None, or load a vision-language "
                "model (llava, qwen2_5_vl, qwen3_vl) for image inputs"
            )
        prompts = self.build_prompts(questions, has_image, chat=chat)

        batch: dict[str, torch.Tensor] = {}
        if any(has_image) or (chat == "raw" and self.is_multimodal):
            for prompt, k in zip(prompts, n_images):
                n_placeholders = prompt.count(self.image_token)
                if n_placeholders != k:
                    how = ("a raw prompt needs exactly one placeholder per image of its row" if chat == "raw"
                           else "the chat template must render exactly one placeholder per image")
                    raise ValueError(
                        f"prompt has {n_placeholders} {self.image_token!r} placeholders but {k} image(s): {how}\n"
                        f"{prompt!r}"
                    )
        if any(has_image):
            if isinstance(images, torch.Tensor):
                # One batched pass (PGD feeds (k,3,H,W) copies of one image).
                pixel_kwargs = self.pixel_inputs(images if images.ndim == 4 else images[None])
            else:
                pixel_kwargs = self._image_kwargs([im for r in row_images for im in r])
            counts = iter(self._num_image_tokens(pixel_kwargs))
            expanded = []
            for prompt, k in zip(prompts, n_images):
                if k:
                    # Each placeholder (in order) becomes as many tokens as its own image gives.
                    parts = prompt.split(self.image_token)
                    prompt = parts[0] + "".join(self.image_token * next(counts) + p for p in parts[1:])
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
