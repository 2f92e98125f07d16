"""Tiny random-weight models built from configs (no hub access), shared by all tests.

Fixtures (session scoped, built once, saved to a temp folder and loaded back through ``erasekit.models.load_model``
so the loading path is exercised too):

    tiny_llava      LlavaAdapter     CLIP tower 28x28 / patch 14 -> 4 image tokens, Llama LM d=32, L=2
    tiny_qwen25vl   Qwen25VLAdapter  patch 14, merge 2, images 28..56 px, LM d=32, L=2
    tiny_qwen3vl    Qwen3VLAdapter   patch 16, merge 2, deepstack after layer 0, LM d=32, L=3
    tiny_causal_lm  CausalLMAdapter  Llama d=32, L=2, with a chat template

All share a byte-level tokenizer (every string is encodable) built with the ``tokenizers`` library.
Tests must not modify the fixtures' weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<image>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|im_start|>",
    "<|im_end|>",
]

CAUSAL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer():
    """Byte-level BPE with no merges (one token per byte) plus the special tokens of all families."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=SPECIAL_TOKENS[4:],
    )


def _text_config(tok, **extra):
    ids = tok.convert_tokens_to_ids
    base = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
    )
    return {**base, **extra}


def _qwen_ids(tok):
    ids = tok.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_llava():
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = make_tiny_tokenizer()
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=dict(model_type="llama", **_text_config(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    # CLIPImageProcessor falls back to the PIL backend without torchvision (what users here get too).
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def _qwen_image_processor(patch, mean=None):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = patch * 2
    kwargs = {} if mean is None else dict(image_mean=mean, image_std=mean)
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": (2 * factor) ** 2},
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        **kwargs,
    )


def _tiny_qwen_vl(config_cls, model_cls, rope: dict, text: dict, vision: dict, patch: int, **image_kw):
    """A tiny Qwen-VL model of the given family + the processor parts the adapter uses (no torchvision)."""
    from erasekit.models import ProcessorParts

    tok = make_tiny_tokenizer()
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0, **rope}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=patch,
                  spatial_merge_size=2, temporal_patch_size=2, **vision)
    config = config_cls(text_config=_text_config(tok, rope_parameters=rope, **text), vision_config=vision,
                        **_qwen_ids(tok))
    torch.manual_seed(0)
    model = model_cls(config).eval()
    # The HF Qwen processors need torchvision (video processor): the parts are all the adapter uses.
    return model, ProcessorParts(tokenizer=tok, image_processor=_qwen_image_processor(patch, **image_kw))


def build_tiny_qwen25vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return _tiny_qwen_vl(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, rope={}, text={},
                         vision=dict(window_size=56, fullatt_block_indexes=[1]), patch=14)


def build_tiny_qwen3vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    return _tiny_qwen_vl(Qwen3VLConfig, Qwen3VLForConditionalGeneration, rope={"mrope_interleaved": True},
                         text=dict(head_dim=16, num_hidden_layers=3),
                         vision=dict(num_position_embeddings=16, deepstack_visual_indexes=[0]), patch=16,
                         mean=[0.5, 0.5, 0.5])


def build_tiny_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    tok.chat_template = CAUSAL_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_text_config(tok))).eval()
    return model, tok


def _save_and_load(tmp_path_factory, name, model, processor):
    """Save like a hub snapshot, then go through load_model (the code path real checkpoints take)."""
    from erasekit.models import ProcessorParts, load_model

    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    if isinstance(processor, ProcessorParts):
        processor.tokenizer.save_pretrained(folder)
        processor.image_processor.save_pretrained(folder)
    else:
        processor.save_pretrained(folder)
    return load_model(folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    return _save_and_load(tmp_path_factory, "llava", *build_tiny_llava())


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory):
    return _save_and_load(tmp_path_factory, "qwen25vl", *build_tiny_qwen25vl())


@pytest.fixture(scope="session")
def tiny_qwen3vl(tmp_path_factory):
    return _save_and_load(tmp_path_factory, "qwen3vl", *build_tiny_qwen3vl())


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    return _save_and_load(tmp_path_factory, "causal", *build_tiny_causal_lm())


@pytest.fixture(scope="session")
def organism_adapter():
    """The committed model organism (data/organism), float32 on the CPU."""
    from erasebook import paths
    from erasekit.models import load_model

    return load_model(str(paths.organism_dir()), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def smollm2_known():
    """SmolLM2-135M-Instruct (float32 on the CPU; the test is skipped where it is not cached) and the capitals of the
    first 16 built-in ones it answers to every direct question: ``(adapter, known facts)``."""
    from erasebook.form_transfer import known_facts
    from erasekit.forms import capital_facts
    from erasekit.models import load_model
    from erasekit.models.smollm2 import smollm2_dir

    folder = smollm2_dir()
    if folder is None:
        pytest.skip("SmolLM2 is not cached (erasekit.models.smollm2.fetch_smollm2)")
    torch.manual_seed(0)
    adapter = load_model(str(folder), device="cpu", dtype=torch.float32)
    return adapter, known_facts(adapter, capital_facts()[:16])


@pytest.fixture(params=["tiny_llava", "tiny_qwen25vl", "tiny_qwen3vl", "tiny_causal_lm"])
def any_adapter(request):
    """Each of the four tiny adapters in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["tiny_llava", "tiny_qwen25vl", "tiny_qwen3vl"])
def vlm_adapter(request):
    """Each tiny vision-language adapter in turn."""
    return request.getfixturevalue(request.param)
