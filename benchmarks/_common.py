"""Shared helpers of the benchmark scripts: CLI, machine info, JSON results, models built from configs.

Timing and memory (interleaved repetitions, ratios, peak memory) are :mod:`erasekit.measure`.

Every benchmark prints ratios measured side by side in one run (A, B, A, B, ... so that load from other processes
affects both sides alike) and writes ``benchmarks/results/<name>.json`` with the machine it ran on.

Models are random-weight ``transformers`` models built from configs (no hub access):

* ``organism``: the architecture of erasekit's model organism (LLaVA: CLIP vision tower + Llama LM, d=192,
  6 layers, 32x32 images, patch 8 -> 16 image tokens) with the organism's own BPE tokenizer and chat template;
* ``full``: LLaVA-1.5-7B's shapes (Llama d=4096, 32 layers, intermediate 11008, 32 heads, vocab 32064; CLIP
  ViT-L/14 at 336 px -> 576 image tokens). On CPU this is too slow, so ``width_divisor`` divides every width
  (hidden, intermediate, heads; head_dim stays 128) and ``image_size`` shrinks the image; depth stays 32 layers.
  The results JSON records both. On a CUDA device the defaults are the full size in bfloat16.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from erasekit.files import atomic_write
from erasekit.models import adapter_for, pick_device_dtype

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------------------------
# CLI and machine info


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: --quick, --out-dir, --threads, --device, --seed, --no-progress."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test, seconds)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where <name>.json is written")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return p


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Apply --threads and --seed; returns the machine info at start (load average included)."""
    torch.set_num_threads(max(1, int(args.threads)))
    torch.manual_seed(args.seed)
    try:  # e.g. "generation_config together with min_new_tokens is deprecated": noise in the benchmark output
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    return machine_info(args.device)


def resolve_device(device: str | None) -> torch.device:
    """The device a benchmark runs on (``--device``, else CUDA when there is a GPU)."""
    return pick_device_dtype(device)[0]


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Platform, CPU count, torch version/threads, device (and GPU name), load average, date."""
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name: str, out_dir: Path, machine: dict, config: Mapping, results: Mapping,
                  notes: list[str] | None = None) -> Path:
    """Write ``out_dir/<name>.json`` = {benchmark, machine (load at start and end), config, results, notes}."""
    machine = dict(machine)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {"benchmark": name, "machine": machine, "config": dict(config), "results": dict(results),
               "notes": list(notes or [])}
    path = Path(out_dir) / f"{name}.json"
    atomic_write(path, json.dumps(payload, indent=1, default=_json_default) + "\n")
    print(f"wrote {path}")
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# memory units


def mib(n: float) -> float:
    """Bytes -> MiB, rounded to 3 decimals."""
    return round(n / 2**20, 3)


# ----------------------------------------------------------------------------------------------------------------
# models built from configs


@dataclass
class LlavaShape:
    """Shapes of a LLaVA model: Llama text model + CLIP vision tower."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    vision_feature_layer: int = -2

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# erasekit's model organism (see erasebook.organism; the run in progress uses d=192, intermediate 512, 6 layers)
ORGANISM = LlavaShape(hidden_size=192, intermediate_size=512, num_layers=6, num_heads=4, vocab_size=2048,
                      vision_hidden=128, vision_intermediate=256, vision_layers=2, vision_heads=4, image_size=32,
                      patch_size=8, vision_feature_layer=-1)
# llava-hf/llava-1.5-7b-hf config.json (text: Vicuna-7B / Llama-2 shapes; vision: CLIP ViT-L/14-336)
LLAVA15_7B = LlavaShape(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, vocab_size=32064,
                        vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16,
                        image_size=336, patch_size=14, vision_feature_layer=-2)
# Qwen/Qwen2.5-VL-7B-Instruct text config (only d and L are needed here)
QWEN25VL_7B_TEXT = {"hidden_size": 3584, "num_layers": 28}


def reduced(shape: LlavaShape, width_divisor: int = 1, image_size: int | None = None) -> LlavaShape:
    """Divide every width (hidden, intermediate, head count) by ``width_divisor``; depth and head_dim stay."""
    w = int(width_divisor)
    if w < 1 or shape.hidden_size % w or shape.num_heads % w or shape.vision_heads % w:
        raise ValueError(f"width_divisor {w} must divide hidden size and head counts of {shape}")
    return LlavaShape(hidden_size=shape.hidden_size // w, intermediate_size=shape.intermediate_size // w,
                      num_layers=shape.num_layers, num_heads=shape.num_heads // w, vocab_size=shape.vocab_size,
                      vision_hidden=shape.vision_hidden // w, vision_intermediate=shape.vision_intermediate // w,
                      vision_layers=shape.vision_layers, vision_heads=shape.vision_heads // w,
                      image_size=image_size or shape.image_size, patch_size=shape.patch_size,
                      vision_feature_layer=shape.vision_feature_layer)


_WORLD_CACHE: dict[int, Any] = {}


def small_world(n_profiles: int = 40):
    """A small synthetic world (portraits, questions, safety prompts) for realistic prompts; cached."""
    from erasebook import world as W

    if n_profiles not in _WORLD_CACHE:
        _WORLD_CACHE[n_profiles] = W.make_world(n_profiles, 10, seed=0, image_size=32)
    return _WORLD_CACHE[n_profiles]


def build_llava(shape: LlavaShape, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                seed: int = 0):
    """A random-weight LLaVA adapter of the given shape, with the organism's tokenizer / processor / template.

    The model's vocabulary may be larger than the tokenizer's (full scale: 32064 rows, as LLaVA-1.5); ids the
    tokenizer does not know decode to nothing, which does not matter for timing.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from erasebook.organism import build_processor, build_tokenizer

    device, dtype = pick_device_dtype(device, dtype)
    tok = build_tokenizer(small_world(), vocab_size=2048)
    processor = build_processor(tok, shape.image_size, shape.patch_size)
    head_dim = shape.hidden_size // shape.num_heads
    text = LlamaConfig(vocab_size=max(shape.vocab_size, len(tok)), hidden_size=shape.hidden_size,
                       intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                       num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_heads, head_dim=head_dim,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch_size,
                              projection_dim=shape.vision_hidden)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=shape.vision_feature_layer, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=shape.image_tokens)
    torch.manual_seed(seed)
    # Built directly on the target device in the target dtype: a 7B model never exists in CPU float32.
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    return adapter_for(model, processor)


def shape_info(shape: LlavaShape, adapter=None) -> dict[str, Any]:
    info = asdict(shape)
    info["image_tokens"] = shape.image_tokens
    if adapter is not None:
        info["parameters"] = sum(p.numel() for p in adapter.model.parameters())
        info["dtype"] = str(adapter.dtype)
    return info


def model_from_args(args: argparse.Namespace):
    """(adapter, shape, notes) for --scale organism|full with --width-divisor / --image-size."""
    device = resolve_device(args.device)
    notes: list[str] = []
    if args.scale == "organism":
        shape = ORGANISM
    else:
        on_gpu = device.type == "cuda"
        w = args.width_divisor or (1 if on_gpu else 4)
        img = args.image_size or (LLAVA15_7B.image_size if on_gpu else 112)
        shape = reduced(LLAVA15_7B, w, img)
        if w != 1 or img != LLAVA15_7B.image_size:
            notes.append(f"REDUCED: LLaVA-1.5-7B depth (32 layers) and head_dim (128) but widths divided by {w} "
                         f"(d={shape.hidden_size}, intermediate={shape.intermediate_size}) and {img}px images "
                         f"({shape.image_tokens} image tokens instead of 576), random weights on {device.type}. "
                         "On a CUDA device the defaults are the full size in bfloat16.")
    adapter = build_llava(shape, device=device, seed=args.seed)
    return adapter, shape, notes


def add_scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=["organism", "full"], default="organism")
    p.add_argument("--width-divisor", type=int, default=None,
                   help="full scale: divide widths by this (default 1 on CUDA, 4 on CPU)")
    p.add_argument("--image-size", type=int, default=None,
                   help="full scale: image side in px (default 336 on CUDA, 112 on CPU)")


def organism_prompts(n: int, with_images: bool = True) -> tuple[list[str], list[Any] | None]:
    """n evaluation-style questions about the world's people (+ their portraits)."""
    from erasebook import world as W

    world = small_world()
    questions, images = [], []
    attrs = list(W.QUESTIONS_TEST)
    for i in range(n):
        p = world.profiles[i % len(world.profiles)]
        a = attrs[i % len(attrs)]
        who = W.IMAGE_WHO if with_images else p.name
        questions.append(W.QUESTIONS_TEST[a][i % len(W.QUESTIONS_TEST[a])].format(who=who))
        images.append(world.portrait(p))
    return questions, (images if with_images else None)


def unit_image(image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def random_steerer(d: int, layers: list[int], n_forget: int = 32, n_retain: int = 128, gamma: float | None = None,
                   null_space: str | float = 0.3, seed: int = 0, gate: str = "contrastive"):
    """An InputAwareSteerer fitted on random activations (timing does not depend on the values).

    ``gate="contrastive"`` (erasekit's default; gamma 1e-3, relative) or ``"nullspace"`` (the paper's; gamma 0.1,
    absolute, ``null_space``)."""
    from erasekit.directions import ErasureDirection
    from erasekit.steering import fit_steerer

    g = torch.Generator().manual_seed(seed)
    Hf = {l: torch.randn(n_forget, d, generator=g) + 1.0 for l in layers}  # shifted: forget rows differ from retain
    Hr = {l: torch.randn(n_retain, d, generator=g) for l in layers}
    direction = ErasureDirection({l: torch.randn(d, generator=g) for l in layers})
    if gate == "contrastive":
        return fit_steerer(Hf, Hr, direction, gamma=1e-3 if gamma is None else gamma, gate="contrastive",
                           gamma_scale="relative")
    return fit_steerer(Hf, Hr, direction, gamma=0.1 if gamma is None else gamma, null_space=null_space,
                       gate="nullspace")
