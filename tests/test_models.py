"""Model adapters: prompts, left padding, labels, the differentiable pixel path vs the processors, loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from erasekit.models import (
    ADAPTERS,
    Adapter,
    CausalLMAdapter,
    LlavaAdapter,
    Qwen3VLAdapter,
    Qwen25VLAdapter,
    adapter_class,
    adapter_for,
    load_model,
    pick_device_dtype,
)


def _pil(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


def _pixel_diff(adapter, img: Image.Image) -> tuple[float, dict, dict]:
    """Max |torch path - processor| over pixel_values for one PIL image; also returns both outputs."""
    ref = adapter.image_processor(images=[img], return_tensors="pt")
    ours = adapter.pixel_inputs(_to_tensor(img)[None])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    if "image_grid_thw" in ref:
        assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    return float((ours["pixel_values"] - ref["pixel_values"]).abs().max()), ours, ref


# -- families and structure ----------------------------------------------------------------------------------


def test_factory_picks_family(tiny_llava, tiny_qwen25vl, tiny_qwen3vl, tiny_causal_lm):
    assert isinstance(tiny_llava, LlavaAdapter) and tiny_llava.family == "llava"
    assert isinstance(tiny_qwen25vl, Qwen25VLAdapter) and tiny_qwen25vl.family == "qwen2_5_vl"
    assert isinstance(tiny_qwen3vl, Qwen3VLAdapter) and tiny_qwen3vl.family == "qwen3_vl"
    assert isinstance(tiny_causal_lm, CausalLMAdapter) and tiny_causal_lm.family == "causal_lm"
    assert set(ADAPTERS) >= {"llava", "qwen2_5_vl", "qwen3_vl", "llama", "qwen2"}
    again = adapter_for(tiny_llava.model, tiny_llava.processor)
    assert type(again) is LlavaAdapter and again.layers[0] is tiny_llava.layers[0]


def test_structure(any_adapter):
    a = any_adapter
    assert a.num_layers == len(a.layers) == a.model.config.get_text_config().num_hidden_layers
    assert a.hidden_size == 32
    assert a.model_id  # the folder it was loaded from
    assert a.device.type == "cpu" and a.dtype == torch.float32
    # layers are the LM's decoder layers: their count matches hidden_states - 1
    batch = a.encode(["hello"])
    out = a.model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == a.num_layers + 1


def test_adapters_satisfy_the_protocol(any_adapter):
    assert isinstance(any_adapter, Adapter)
    assert not isinstance(object(), Adapter)


@pytest.mark.parametrize("cls, path, role", [
    (LlavaAdapter, "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1", "vision"),
    (LlavaAdapter, "model.multi_modal_projector.linear_1", "projector"),
    (LlavaAdapter, "model.language_model.layers.0.mlp.down_proj", "language"),
    (LlavaAdapter, "lm_head", "lm_head"),
    (Qwen25VLAdapter, "model.visual.blocks.0.mlp.down_proj", "vision"),
    (Qwen25VLAdapter, "model.visual.merger.mlp.0", "projector"),
    (Qwen3VLAdapter, "model.visual.deepstack_merger_list.0.linear_fc1", "projector"),
    (Qwen3VLAdapter, "model.language_model.layers.1.self_attn.q_proj", "language"),
    (CausalLMAdapter, "model.layers.0.mlp.gate_proj", "language"),
    (CausalLMAdapter, "lm_head", "lm_head"),
])
def test_module_role_is_class_level_family_knowledge(cls, path, role):
    assert cls.module_role(path) == role  # no model needed


def test_every_module_has_its_family_role(any_adapter):
    family = adapter_class(any_adapter.model.config.model_type)
    assert family is type(any_adapter)
    roles = {any_adapter.module_role(n) for n, _ in any_adapter.model.named_modules()}
    assert roles == {"lm_head", "language"} | ({"vision", "projector"} if any_adapter.is_multimodal else set())
    assert any_adapter.mlp_out and any_adapter.mlp_in


def test_pick_device_dtype():
    assert pick_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
    assert pick_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    device, dtype = pick_device_dtype()
    assert (device.type, dtype) in {("cuda", torch.bfloat16), ("cpu", torch.float32)}
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_device_dtype("cpu", "float33")


# -- prompts and padding -------------------------------------------------------------------------------------


def test_llava_fallback_prompt(tiny_llava):
    assert tiny_llava.chat_template is None  # the tiny processor has none: the LLaVA-1.5 format is used
    assert tiny_llava.build_prompts(["Who?"], [True]) == ["USER: <image>\nWho? ASSISTANT:"]
    assert tiny_llava.build_prompts(["Who?"], [False]) == ["USER: Who? ASSISTANT:"]
    assert tiny_llava.build_prompts(["Who?"], [True], chat=False) == ["<image>\nWho?"]


def test_chat_template_used(tiny_causal_lm):
    assert tiny_causal_lm.build_prompts(["Hi"], [False]) == ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]


def test_qwen_fallback_prompts(tiny_qwen25vl, tiny_qwen3vl):
    (p25,) = tiny_qwen25vl.build_prompts(["Q"], [True])
    assert p25.startswith("<|im_start|>system\n") and "<|vision_start|><|image_pad|><|vision_end|>Q" in p25
    (p3,) = tiny_qwen3vl.build_prompts(["Q"], [True])
    assert p3 == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n<|im_start|>assistant\n"


def test_left_padding_and_labels(any_adapter):
    a = any_adapter
    questions = ["a", "a much longer question here"]
    batch = a.encode(questions, answers=["yes", "no"])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert mask[:, -1].all() and mask[1].all() and not mask[0, 0]  # left padded, last position real
    assert (ids[mask == 0] == a.pad_token_id).all()
    eos = a.tokenizer.eos_token_id
    for i, answer in enumerate(["yes", "no"]):
        target = labels[i][labels[i] != -100].tolist()
        assert target == a.tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
        assert ids[i, -len(target) :].tolist() == target  # answer tokens sit at the end, after the prompt
    # without answers: the prompt alone, last token real, no labels
    plain = a.encode(questions)
    assert "labels" not in plain and plain["attention_mask"][:, -1].all()


def test_padding_does_not_change_last_token_logits(tiny_llava):
    a = tiny_llava
    alone = a.model(**a.encode(["short"])).logits[0, -1]
    padded = a.model(**a.encode(["short", "a much longer question to force padding"])).logits[0, -1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_image_tokens_expanded(vlm_adapter):
    a = vlm_adapter
    pixels = torch.rand(2, 3, *a.image_size)
    batch = a.encode(["q1", "q2"], images=pixels)
    image_id = a.tokenizer.convert_tokens_to_ids(a.image_token)
    n_tokens = a._num_image_tokens(a.pixel_inputs(pixels))
    assert (batch["input_ids"] == image_id).sum(1).tolist() == n_tokens
    if "mm_token_type_ids" in batch:
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())
    a.model(**batch)  # the model accepts it (token count matches features)


def test_mixed_batch_with_and_without_image(vlm_adapter):
    a = vlm_adapter
    batch = a.encode(["with image", "text only"], images=[_pil(30, 40), None])
    image_id = a.tokenizer.convert_tokens_to_ids(a.image_token)
    counts = (batch["input_ids"] == image_id).sum(1)
    assert counts[0] > 0 and counts[1] == 0
    assert a.model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_raw_prompt_with_two_images_equals_the_llava_processor(tiny_llava):
    """chat="raw": the string is the whole prompt; a list of images fills its placeholders in order (MLLMU-Bench's
    eval.py few-shot prompts: ``processor(images=[*shot_images, image], text=prompt)``)."""
    a = tiny_llava
    im1, im2 = _pil(28, 28, seed=5), _pil(30, 40, seed=6)
    prompt = "USER:<image>\nQ1 [Blank]\nCorrect Answer: x\nUSER: <image>\nQ2 [Blank]\nASSISTANT:"
    assert a.build_prompts([prompt], [True], chat="raw") == [prompt]
    ours = a.encode([prompt], images=[[im1, im2]], chat="raw")
    ref = a.processor(images=[im1, im2], text=prompt, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-6)
    image_id = a.tokenizer.convert_tokens_to_ids(a.image_token)
    assert int((ours["input_ids"] == image_id).sum()) == 2 * 4  # 4 tokens per 28x28 image
    # batched with a one-image raw row, a text-only raw row and a tuple: each row gets its own images
    text_only = "USER:\nQ3\nASSISTANT:"
    batch = a.encode([prompt, "USER: <image>\nQ\nASSISTANT:", text_only], images=[(im1, im2), im2, None], chat="raw")
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [8, 4, 0]
    assert batch["pixel_values"].shape[0] == 3
    alone = a.encode([text_only], chat="raw")
    assert batch["input_ids"][2, -alone["input_ids"].shape[1]:].tolist() == alone["input_ids"][0].tolist()
    (text,) = a.generate(ours, max_new_tokens=2)  # the model takes several images in one prompt
    assert isinstance(text, str)


def test_raw_prompt_with_two_images_qwen(tiny_qwen25vl, tiny_qwen3vl):
    for a in (tiny_qwen25vl, tiny_qwen3vl):
        ph = "<|vision_start|><|image_pad|><|vision_end|>"
        ims = [_pil(*a.image_size, seed=7), _pil(40, 60, seed=8)]
        batch = a.encode([f"A {ph} then {ph} ?", "text"], images=[ims, None], chat="raw")
        image_id = a.tokenizer.convert_tokens_to_ids(a.image_token)
        counts = a._num_image_tokens(a._processor_pixels(ims))
        assert counts[0] != counts[1]  # per-image counts, each placeholder expanded with its own
        ids = batch["input_ids"][0].tolist()
        first = ids.index(image_id)
        assert ids[first:first + counts[0]] == [image_id] * counts[0] and ids[first + counts[0]] != image_id
        assert (batch["input_ids"] == image_id).sum(1).tolist() == [sum(counts), 0]
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())
        assert a.model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_raw_prompt_placeholder_count_must_match(tiny_llava, tiny_causal_lm):
    a = tiny_llava
    im = _pil(28, 28)
    with pytest.raises(ValueError, match="2 '<image>' placeholders but 1 image"):
        a.encode(["<image> <image>"], images=[[im]], chat="raw")
    with pytest.raises(ValueError, match="1 '<image>' placeholders but 0 image"):
        a.encode(["USER: <image>\nQ\nASSISTANT:"], chat="raw")
    with pytest.raises(ValueError, match="0 '<image>' placeholders but 2 image"):
        a.encode(["no placeholder"], images=[(im, im)], chat="raw")
    with pytest.raises(ValueError, match="exactly one placeholder per image"):  # chat prompts: one per row
        a.encode(["q"], images=[[im, im]])
    with pytest.raises(ValueError, match="must not contain None"):
        a.encode(["<image>"], images=[[im, None]], chat="raw")
    with pytest.raises(ValueError, match="'raw'"):
        a.encode(["q"], chat="plain")
    assert tiny_causal_lm.encode(["USER: hi\nASSISTANT:"], chat="raw")["input_ids"].shape[0] == 1


def test_generate_returns_new_tokens_only(any_adapter):
    a = any_adapter
    images = [_pil(28, 28)] if a.is_multimodal else None
    batch = a.encode(["Say something"], images=images)
    (text,) = a.generate(batch, max_new_tokens=4)
    out = a.model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=a.pad_token_id)
    expected = a.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text == expected


# -- the differentiable pixel path ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["native", "resized"])
def test_pixel_path_matches_processor(vlm_adapter, size, record_property):
    """Torch pixel path == the family's image processor (PIL backend). At image_size no resampling happens; with
    resizing the torch path reproduces PIL's two uint8 passes, up to 1-2 uint8 steps from PIL's fixed-point maths."""
    a = vlm_adapter
    h, w = a.image_size if size == "native" else (45, 61)
    diff, ours, _ = _pixel_diff(a, _pil(h, w, seed=1))
    record_property(f"{a.family}_{size}_max_abs_diff", diff)
    print(f"\n{a.family} {size} ({h}x{w}): max |torch - processor| = {diff:.3g}")
    if size == "native":
        assert diff < 1e-5
    else:
        std = min(a.image_processor.image_std)
        assert diff <= 2.0001 / 255 / std  # at most two uint8 steps (fixed-point rounding) after normalising


@pytest.mark.parametrize(
    "src, dst",
    [((45, 61), (56, 56)), ((45, 61), (32, 64)), ((61, 45), (28, 20)), ((300, 200), (112, 84)), ((40, 40), (50, 60))],
)
def test_resize_matches_pil(src, dst):
    from erasekit.models.pixels import resize

    img = _pil(*src, seed=4)
    ref = _to_tensor(img.resize(dst[::-1], Image.BICUBIC))
    x = _to_tensor(img)[None].requires_grad_(True)
    ours = resize(x, *dst, "bicubic")[0]
    # PIL uses 22-bit fixed-point coefficients with half-up rounding: isolated pixels may differ by 1-2 steps
    assert (ours - ref).abs().max() <= 2.0001 / 255
    assert (ours - ref).abs().mean() < 0.05 / 255
    ours.sum().backward()  # straight-through rounding keeps gradients
    assert x.grad.abs().sum() > 0


def test_llava_pad_to_square_matches_processor(tiny_llava):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    ip = LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_pad=True)
    a = LlavaAdapter(tiny_llava.model, type("P", (), {"tokenizer": tiny_llava.tokenizer, "image_processor": ip})())
    diff, _, _ = _pixel_diff(a, _pil(20, 28, seed=2))  # pad 20x28 -> 28x28: no resampling, exact
    assert diff < 1e-5


def test_qwen_patch_order_roundtrip(tiny_qwen25vl):
    """Un-patchify the flat patches and recover the normalised image: merge windows and (C,T,p,p) order."""
    a = tiny_qwen25vl
    ip = a.image_processor
    x = torch.rand(1, 3, *a.image_size)
    out = a.pixel_inputs(x)["pixel_values"]
    p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    gh, gw = a.image_size[0] // p, a.image_size[1] // p
    patches = out.view(gh // m, gw // m, m, m, 3, t, p, p)
    assert torch.equal(patches[..., 0, :, :], patches[..., 1, :, :])  # temporal duplicates
    img = patches[..., 0, :, :].permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    assert torch.allclose(img * std + mean, x[0], atol=1e-6)


def test_gradients_reach_pixels(vlm_adapter):
    a = vlm_adapter
    pixels = torch.rand(1, 3, *a.image_size, requires_grad=True)
    batch = a.encode(["what is it"], images=pixels, answers=["a cat"])
    a.model(**batch).loss.backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_pil_and_tensor_images_agree(vlm_adapter):
    a = vlm_adapter
    img = _pil(*a.image_size, seed=3)
    from_pil = a.encode(["q"], images=[img])
    from_tensor = a.encode(["q"], images=[_to_tensor(img)])
    assert torch.equal(from_pil["input_ids"], from_tensor["input_ids"])
    assert torch.allclose(from_pil["pixel_values"], from_tensor["pixel_values"], atol=1e-5)


# -- errors that say what to do ------------------------------------------------------------------------------


def test_bad_image_inputs(tiny_llava):
    a = tiny_llava
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        a.encode(["q"], images=[_pil(28, 28).convert("L")])
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        a.encode(["q"], images=[_pil(28, 28).convert("RGBA")])
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        a.pixel_inputs(torch.rand(1, 28, 28, 3))
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        a.pixel_inputs(torch.rand(3, 28, 28))
    with pytest.raises(ValueError, match="divide 0..255 images by 255"):
        a.pixel_inputs(torch.rand(1, 3, 28, 28) * 255)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        a.encode(["q"], images=torch.rand(1, 3, 28, 28) - 0.5)
    with pytest.raises(ValueError, match="one image per question"):
        a.encode(["q1", "q2"], images=torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="x / 255"):
        a.pixel_inputs(torch.randint(0, 255, (1, 3, 28, 28), dtype=torch.uint8))


def test_text_only_model_rejects_images(tiny_causal_lm):
    with pytest.raises(ValueError, match="text-only"):
        tiny_causal_lm.encode(["q"], images=[_pil(28, 28)])
    assert tiny_causal_lm.image_size is None


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./models/llava-1.5-7b")


def test_unreachable_hub_id_raises(monkeypatch):
    import huggingface_hub.constants

    # offline: fail at once instead of retrying the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_model("erasekit-test/definitely-not-cached-model")
