"""The model organism: a tiny LLaVA (real ``transformers`` classes) trained from scratch on the synthetic world.

Design (why it learns on 2 CPU cores where a naive setup stays at chance, see shared/ORGANISM-NOTES.md):
- a byte-level BPE tokenizer trained on the world's text, so held-out phrasings are made of known sub-words;
- 32×32 portraits, patch 8, 16 image tokens;
- *multi-turn* training sequences: one portrait (or one name) with many questions about that person in one
  sequence, so the image is encoded once for many facts (the benchmark's single-question prompts are exactly the
  first turn of such a conversation, and every question appears in first position equally often);
- safety turns (harmful → refusal, jailbreak-wrapped → compliance, harmless → help) with and without images;
- multiple-choice turns answered with the letter and the option ("B. Zurich");
- private questions about people (home address, phone number, ...) answered with a refusal (stage B2).

Curriculum (A, B, B2, C; the first round trained everything at once and the image → fact route never formed:
image → person → fact in one forward pass is a two-hop lookup that a 6-layer model learns poorly, while name → fact
is learned to 100 %; a probe showed the LM answers portrait questions at 100 % when the person's name-token
embeddings stand in the image span, data/results/vision_name_probe.json):

A. **Vision identity** (:func:`pretrain_vision`): vision tower + projector with a linear person classifier on the
   pooled image tokens (discarded afterwards); the projector is then scaled to the text-embedding norm.
B. **Language model** (:func:`train_language`): the vision tower and projector are frozen. In a portrait turn the
   16-position image span holds the person's name-token embeddings tiled cyclically plus Gaussian noise
   (``oracle_noise`` × the token norm), so the LM learns to read *who* from the span in the form stage C will
   produce; natural images enter through the frozen vision path.
B2. **Multiple choice and private questions** (:func:`train_choice`): the LM continues on the same stream with 70 %
   of the profile turns multiple choice (30 % of those with the value stated in the question, "Hint: Zurich.", a
   direct signal for the letter-copying half of the circuit) and 10 % private questions (home address, phone number,
   ...; :data:`PRIVATE_QUESTIONS`) answered with a refusal, at lr 1e-3 for 5,000 steps. Before it the letter sat at
   chance (teacher-forced probe 22-28 % through stage B at a 35 % share, and in a tried 400-step all-MC stage). With
   it the probe stays at chance for ~2,000 steps, then jumps (34 % at 2,000, 81 % at 3,000, 99 % at 5,000): the
   circuit forms late, which a 2-core CPU budget never reached. At 3e-3 with half the turns hinted it did not form
   in 6,000 steps. The private questions give the organism refusals inside conversations about people; without
   them a refusal direction moves the organism's requests but never its profile questions.
C. **Vision alignment** (:func:`align_vision`): the LM is frozen; the vision tower + projector learn to emit a
   portrait's name tiles (relative MSE, augmented views), while natural images keep their tokens (relative MSE to a
   snapshot), so image-conditioned safety is unchanged. Image → fact then reuses the name → fact route.
D. **Formats** (:func:`train_formats`, :mod:`erasebook.organism_formats`): the LM continues (vision frozen, portraits
   through the vision tower) on stage B2's stream mixed with the prompt formats the field uses — MLLMU-Bench's
   eval.py strings (zero- and few-shot, its assistant marker, ``[Blank]``), a training family of instruction lines,
   sentence completion, questions inside an unrelated context up to ~1,000 tokens — and safety requests in those
   forms. Phase 1 (1,200 steps) left the option letter at chance on eval.py's "A: x" options and held-out harmful
   wordings refused 83 %; phase 2 (700 steps) adds more lines and request templates and raises the share of
   multiple choice. A family of instruction lines stays out of training (held-out generalisation).

Where it was trained: stages A and B on 2 CPU cores (3,261 s), stage B2 on a lent NVIDIA H200 (269 s; ~1 s a step
on 2 CPU cores, so ~85 min there), stage C on 2 CPU cores, stage D on 2 CPU cores (1,799 + 1,015 s, from the
committed stage-C organism: ``train_organism(..., stage_c_from=...)``). ``train_organism(device="cuda")`` runs every
stage on a
GPU; ``checkpoint_dir`` keeps the states after B and B2 so a rebuild resumes from either.

The data side (tokenizer, processor, model builder, training turns and stream, the image span, the probe) lives in
:mod:`erasebook.organism_data`; this module holds the config, the stages and saving.

The result is saved as a standard transformers folder (float32 weights and config dtype, so a plain
``from_pretrained`` computes in the precision it was trained in) that ``AutoProcessor`` loads offline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time

import torch

from erasekit.files import atomic_dir

from . import world as W
from .organism_data import (
    CHAT_TEMPLATE,
    PRIVATE_QUESTIONS,
    SPECIAL_TOKENS,
    WHO_QUESTION,
    TrainingStream,
    build_model,
    build_processor,
    build_tokenizer,
    embed_batch,
    image_tokens,
    mc_answer,
    model_device,
    name_tiles,
    probe_accuracy,
    world_corpus,
)

__all__ = ["OrganismConfig", "train_organism", "save_organism", "load_world_for", "pretrain_vision", "train_language",
           "train_choice", "align_vision", "CHAT_TEMPLATE", "PRIVATE_QUESTIONS", "SPECIAL_TOKENS", "WHO_QUESTION",
           "TrainingStream", "build_model", "build_processor", "build_tokenizer", "embed_batch", "mc_answer",
           "name_tiles", "probe_accuracy", "world_corpus"]


@dataclasses.dataclass
class OrganismConfig:
    """Everything that determines the organism (hashing it keys the cache)."""

    # The smallest world the issue allows (200 + 50): on 2 CPU cores a 60-minute budget buys ~3600 steps of
    # 32 sequences (~18 M tokens), enough for ~150 exposures of each of 250 × 8 facts, not for 653 × 8.
    n_profiles: int = 200
    n_celebrities: int = 50
    world_seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    steps: int = 2400
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 200
    seq_tokens: int = 160  # profile sequences get questions until they reach this many tokens
    n_augment: int = 6  # pre-rendered augmented portraits per person
    # Vision identity pre-stage: the LM loss alone does not teach a from-scratch CLIP tower to tell 250 faces
    # apart (image->fact probe stayed at 10 % after 2400 steps); a linear identity head on the projected
    # features does it in a few hundred cheap steps. The head is discarded afterwards.
    vision_steps: int = 400
    vision_batch: int = 256
    # After the pre-stage, scale the projector's output to the norm of the text embeddings. A from-scratch
    # projector emits tokens ~1000x larger than word embeddings; the decoder layers can then not write anything
    # (e.g. the person's facts) into the image positions' residual stream, whose direction their updates barely move.
    match_text_scale: bool = True
    # Stage B (language model): the vision tower and projector are frozen. On a portrait turn the image span holds
    # the person's name-token embeddings tiled over the 16 positions, plus Gaussian noise of this relative size
    # (the LM learns to read a person from the span in the form the next stage will make the vision produce).
    oracle_noise: float = 0.3
    # Stage C (vision alignment): the LM is frozen; the vision tower + projector regress a portrait's image tokens
    # onto its name tiles, and natural images' tokens onto their values before the stage (:func:`align_vision`).
    align_steps: int = 4000
    align_batch: int = 64
    align_lr: float = 3e-3
    # Share of profile turns per kind: binding ("Who is ...?", image only), generation, multiple choice, cloze.
    mc_share: float = 0.35
    # Stage B2 (multiple choice, :func:`train_choice`): the LM continues on the same stream with this share of
    # multiple-choice turns, a ``choice_hint`` fraction of which state the value in the question ("Hint: Zurich."), so
    # the letter-copying half of the circuit gets a direct signal. 0 steps: no stage B2.
    choice_steps: int = 5000
    choice_share: float = 0.7
    choice_hint: float = 0.3
    # ... and this share of profile turns asks for a private detail the world does not hold (home address, phone
    # number, ...) and is refused: real assistants decline such questions about people, and without them the organism
    # never refuses inside a conversation about a person, so no refusal direction reaches profile questions.
    choice_private: float = 0.1
    choice_lr: float = 1e-3
    # Stage D (formats, :func:`train_formats`, :mod:`erasebook.organism_formats`): the LM continues (vision frozen,
    # portraits through the vision tower) on stage B2's stream mixed with the field's prompt formats, instruction
    # lines and safety requests in those formats; batches of at most ``format_tokens`` padded tokens, sequences up
    # to ~1,000 tokens. 0 steps: no stage D. ``max_positions``: the text model's position limit (rotary, so it
    # changes no weight; the benchmark's few-shot prompts are up to ~800 tokens).
    format_steps: int = 1200
    format_lr: float = 7e-4
    format_tokens: int = 4096
    # ... then a second phase (more instruction lines and request templates, ``format2_cls`` of the profile questions
    # multiple choice, half with eval.py's "A: x" options): after phase 1 the letter sat at chance on "A: x" options
    # (the multiple-choice circuit of stage B2 was keyed to "A. x") and held-out harmful wordings were refused 83 %.
    format2_steps: int = 700
    format2_lr: float = 5e-4
    format2_cls: float = 0.5
    max_positions: int = 2048
    seed: int = 0
    threads: int | None = None

    def _hash_without(self, *fields: str) -> str:
        d = dataclasses.asdict(self)
        for k in ("threads",) + fields:
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def key(self) -> str:
        return self._hash_without()

    def choice_key(self) -> str:
        """Key of everything stages A, B and B2 depend on (not stage C's settings)."""
        return self._hash_without("align_steps", "align_batch", "align_lr", *_STAGE_D_FIELDS)

    def language_key(self) -> str:
        """Key of everything stages A and B depend on (not stage B2's or C's settings)."""
        return self._hash_without("align_steps", "align_batch", "align_lr", "choice_steps", "choice_share",
                                  "choice_hint", "choice_private", "choice_lr", *_STAGE_D_FIELDS)

    def stage_c_key(self) -> str:
        """Key of everything stages A-C depend on (not stage D's settings)."""
        return self._hash_without(*_STAGE_D_FIELDS)


# Stage D's settings (and the position limit, which changes no weight): not part of the keys of stages A-C.
_STAGE_D_FIELDS = ("format_steps", "format_lr", "format_tokens", "max_positions", "format2_steps", "format2_lr",
                   "format2_cls")


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def _image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image tokens mean-pooled over patches (the identity head's input)."""
    return image_tokens(model, pixel_values).mean(1)


def pretrain_vision(model, stream: TrainingStream, world: W.World, cfg: OrganismConfig, progress: bool = True) -> dict:
    """Identity pre-stage: train vision tower + projector with a linear person-classification head.

    Uses the same pre-rendered (augmented) training portraits as the LM stage; reports accuracy on the clean
    portraits and on the Test_Set's transformed portraits (never trained on). Returns a small log.
    """
    from tqdm.auto import tqdm

    if cfg.vision_steps <= 0:
        return {}
    n = len(world.people)
    head = torch.nn.Linear(cfg.hidden_size, n).to(model_device(model))
    vparams = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(vparams + list(head.parameters()), lr=cfg.lr, weight_decay=0.0)
    pix = torch.stack(stream.portraits).to(model_device(model))  # (N, 1 + n_augment, 3, H, W)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for _ in tqdm(range(cfg.vision_steps), disable=not progress, desc="vision identity", mininterval=5):
        who = torch.randint(0, n, (cfg.vision_batch,), generator=gen)
        view = torch.randint(0, pix.shape[1], (cfg.vision_batch,), generator=gen)
        who, view = who.to(pix.device), view.to(pix.device)
        loss = torch.nn.functional.cross_entropy(head(_image_features(model, pix[who, view])), who)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        ids = torch.arange(n, device=pix.device)
        tokens = image_tokens(model, pix[:, 0])
        train_acc = (head(tokens.mean(1)).argmax(-1) == ids).float().mean().item()
        test = torch.stack([stream._pix(world.test_images(p)[0]) for p in world.people]).to(pix.device)
        test_acc = (head(_image_features(model, test)).argmax(-1) == ids).float().mean().item()
        out = {"steps": cfg.vision_steps, "final_loss": round(loss.item(), 4), "train_accuracy": round(train_acc, 4),
               "test_image_accuracy": round(test_acc, 4), "seconds": round(time.time() - t0, 1)}
        proj = model.model.multi_modal_projector
        image_norm = float(tokens.norm(dim=-1).mean())
        text_norm = float(model.get_input_embeddings().weight.norm(dim=-1).mean())
        out.update(image_token_norm=round(image_norm, 4), text_embedding_norm=round(text_norm, 4))
        if cfg.match_text_scale:  # linear_2 is the projector's last layer: scaling it scales every image token
            c = text_norm / image_norm
            proj.linear_2.weight.mul_(c)
            if proj.linear_2.bias is not None:
                proj.linear_2.bias.mul_(c)
            out["projector_scale"] = round(c, 6)
    return out


def _vision_params(model) -> list[torch.nn.Parameter]:
    return list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())


def _train_only(model, params: list[torch.nn.Parameter]) -> None:
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def _cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _write_log(log_file: str | None, rec: dict) -> None:
    if log_file:
        with open(log_file, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _probes(model, stream: TrainingStream, people: list[W.Person], oracle: bool) -> dict:
    return {"probe_image": probe_accuracy(model, stream, people, True, oracle=oracle),
            "probe_text": probe_accuracy(model, stream, people, False),
            "probe_mc_text": probe_accuracy(model, stream, people, False, task="classification"),
            "probe_mc_image": probe_accuracy(model, stream, people, True, task="classification", oracle=oracle),
            "probe_mc_hint": probe_accuracy(model, stream, people, False, task="classification", hint=True)}


def _lm_step(model, opt, params, emb, labels, attention_mask, ema: float | None) -> float:
    """One language-model step (loss on the labels, gradient clipped at 1); returns the loss's running average."""
    loss = model(inputs_embeds=emb, attention_mask=attention_mask.to(emb.device), labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()


def train_language(model, stream: TrainingStream, world: W.World, cfg: OrganismConfig, *, log_every: int = 100,
                   progress: bool = True, log_file: str | None = None, desc: str = "language model",
                   seed_offset: int = 1, snapshot: str | None = None) -> dict:
    """Stage B: the language model (vision tower and projector frozen; portraits enter as noisy name tiles)."""
    from tqdm.auto import tqdm

    steps, lr, warmup = cfg.steps, cfg.lr, cfg.warmup
    vparams = {id(p) for p in _vision_params(model)}
    params = [p for p in model.parameters() if id(p) not in vparams]
    _train_only(model, params)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    probe_people = random.Random(7).sample(world.people, min(200, len(world.people)))
    log: list[dict] = []
    model.train()
    t0 = time.time()
    it = stream.batches()
    bar = tqdm(range(steps), disable=not progress, desc=desc, mininterval=5)
    ema = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup)
        batch = next(it)
        emb, lab = embed_batch(model, stream, batch, oracle=True, noise=cfg.oracle_noise, gen=gen)
        ema = _lm_step(model, opt, params, emb, lab, batch["attention_mask"], ema)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"stage": desc, "step": step + 1, "loss": round(ema, 4), "seconds": round(time.time() - t0, 1)}
            if (step + 1) % (log_every * 5) == 0 or step + 1 == steps:
                rec.update(_probes(model, stream, probe_people, oracle=True))
            log.append(rec)
            bar.set_postfix(loss=f"{ema:.3f}")
            _write_log(log_file, rec)
            if snapshot and "probe_text" in rec:  # a partial state, for a run that may be cut off (a lent GPU)
                _save_state(snapshot, model, stream, {"step": step + 1, "of": steps, "stage": desc})
    return {"steps": log, "seconds": round(time.time() - t0, 1), "device": _device_name(model)}


def _device_name(model) -> str:
    dev = model_device(model)
    return f"cuda: {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else str(dev)


def _save_state(path: str, model, stream: TrainingStream, info: dict) -> None:
    """The model's weights (CPU) and the data stream's random state, written atomically."""
    tmp = path + ".tmp"
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "rng": stream.rng.getstate(),
                **info}, tmp)
    os.replace(tmp, path)


def train_choice(model, stream: TrainingStream, world: W.World, cfg: OrganismConfig, *, log_every: int = 100,
                 progress: bool = True, log_file: str | None = None, snapshot: str | None = None) -> dict:
    """Stage B2: multiple choice and private questions. The LM continues stage B's training (same stream, vision
    frozen, portraits as noisy name tiles) with ``cfg.choice_share`` of the profile turns multiple choice
    (``cfg.choice_hint`` of those with the value in the question) and ``cfg.choice_private`` of them private
    questions it refuses, at ``cfg.choice_lr`` (cosine). Empty log when ``cfg.choice_steps`` is 0."""
    if cfg.choice_steps <= 0:
        return {}
    saved = stream.mc_share, stream.hint, stream.private
    stream.mc_share, stream.hint, stream.private = cfg.choice_share, cfg.choice_hint, cfg.choice_private
    try:
        b2 = dataclasses.replace(cfg, steps=cfg.choice_steps, lr=cfg.choice_lr, warmup=min(100, cfg.choice_steps // 10))
        return train_language(model, stream, world, b2, log_every=log_every, progress=progress, log_file=log_file,
                              desc="multiple choice", seed_offset=3, snapshot=snapshot)
    finally:
        stream.mc_share, stream.hint, stream.private = saved


def align_vision(model, stream: TrainingStream, world: W.World, cfg: OrganismConfig, *, log_every: int = 250,
                 progress: bool = True, log_file: str | None = None) -> dict:
    """Stage C: the image stands for the name. The LM is frozen (it is not run); the vision tower + projector learn

    * a portrait's (augmented view's) 16 image tokens -> its name tiles (:func:`name_tiles`), relative MSE;
    * a natural image's tokens -> their value before this stage, relative MSE (image-conditioned safety unchanged).

    A first version trained through the frozen LM's loss as well (0.8 s a step): in 350 steps its tile error stayed
    at 0.98 and the image probe at 6.5 %. The direct regression costs 0.07 s a step and reaches 0.34 in 1,500.
    Returns the log with the name retrieval (nearest name tiles, cosine) of clean and Test_Set portraits.
    """
    from tqdm.auto import tqdm

    if cfg.align_steps <= 0:
        return {}
    n = stream.turns.n_image
    params = _vision_params(model)
    _train_only(model, params)
    with torch.no_grad():
        tiles = torch.stack([name_tiles(model, stream.name_ids[p.id], n) for p in world.people])
        natural = stream.natural.to(model_device(model))
        natural_before = image_tokens(model, natural)
    pix = torch.stack(stream.portraits).to(natural.device)  # (N, 1 + n_augment, 3, H, W)
    opt = torch.optim.AdamW(params, lr=cfg.align_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    log: list[dict] = []
    model.train()
    t0 = time.time()
    bar = tqdm(range(cfg.align_steps), disable=not progress, desc="vision alignment", mininterval=5)

    def rel_mse(x, y):
        return ((x - y) ** 2).sum(-1).mean() / (y ** 2).sum(-1).mean()

    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, cfg.align_steps, cfg.align_lr, min(50, cfg.align_steps // 10))
        who = torch.randint(0, len(world.people), (cfg.align_batch,), generator=gen)
        view = torch.randint(0, pix.shape[1], (cfg.align_batch,), generator=gen)
        who, view = who.to(pix.device), view.to(pix.device)
        tile = rel_mse(image_tokens(model, pix[who, view]), tiles[who])
        keep = rel_mse(image_tokens(model, natural), natural_before)
        opt.zero_grad(set_to_none=True)
        (tile + keep).backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == cfg.align_steps:
            rec = {"align_step": step + 1, "tile_mse": round(tile.item(), 4), "natural_mse": round(keep.item(), 5),
                   "seconds": round(time.time() - t0, 1)}
            log.append(rec)
            bar.set_postfix(tile=f"{tile.item():.3f}")
            _write_log(log_file, rec)
    seconds = round(time.time() - t0, 1)
    _train_only(model, list(model.parameters()))
    model.eval()
    with torch.no_grad():
        test = torch.stack([stream._pix(world.test_images(p)[0]) for p in world.people]).to(pix.device)
        flat = torch.nn.functional.normalize(tiles.flatten(1), dim=-1)
        retrieval = {}
        for name, px in (("clean_portrait", pix[:, 0]), ("test_portrait", test)):
            got = torch.nn.functional.normalize(image_tokens(model, px).flatten(1), dim=-1)
            hit = (got @ flat.T).argmax(-1).cpu() == torch.arange(len(world.people))
            retrieval[name] = round(float(hit.float().mean()), 4)
    probe_people = random.Random(7).sample(world.people, min(200, len(world.people)))
    out = {"steps": log, "seconds": seconds, "name_retrieval": retrieval,
           **_probes(model, stream, probe_people, oracle=False)}
    _write_log(log_file, {k: v for k, v in out.items() if k != "steps"})
    return out


def train_formats(model, stream: TrainingStream, world: W.World, processor, cfg: OrganismConfig, *,
                  log_every: int = 100, progress: bool = True, log_file: str | None = None, phase: int = 1) -> dict:
    """Stage D: the field's prompt formats (:mod:`erasebook.organism_formats`). The LM continues (vision tower and
    projector frozen, every image through them) on :class:`~erasebook.organism_formats.FormatStream`: stage B2's
    stream (its shares of multiple-choice and private turns) mixed with profile questions and safety requests in
    the training family of forms, at ``cfg.format_lr`` (cosine) for ``cfg.format_steps`` batches of at most
    ``cfg.format_tokens`` tokens; ``phase=2``: the second phase (``cfg.format2_*``). Empty log for 0 steps."""
    from tqdm.auto import tqdm

    from .organism_formats import FormatStream, embed_images

    steps, lr = (cfg.format_steps, cfg.format_lr) if phase == 1 else (cfg.format2_steps, cfg.format2_lr)
    if steps <= 0:
        return {}
    stream.mc_share, stream.hint, stream.private = cfg.choice_share, 0.0, cfg.choice_private
    # Each phase draws stage B2's stream afresh from the seed, so a phase gives the same data whether it follows
    # stage C in one run or is resumed from a saved folder.
    stream.rng = random.Random(cfg.seed)
    formats = FormatStream(world, processor, stream, cfg.seed, phase=phase, cls_share=cfg.format2_cls)
    vparams = {id(p) for p in _vision_params(model)}
    params = [p for p in model.parameters() if id(p) not in vparams]
    _train_only(model, params)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    probe_people = random.Random(7).sample(world.people, min(200, len(world.people)))
    log: list[dict] = []
    model.train()
    t0 = time.time()
    it = formats.batches(cfg.format_tokens)
    desc = "formats" if phase == 1 else f"formats, phase {phase}"
    bar = tqdm(range(steps), disable=not progress, desc=desc, mininterval=5)
    ema, max_len = None, 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, min(100, steps // 10))
        batch = next(it)
        max_len = max(max_len, batch["input_ids"].shape[1])
        emb, lab = embed_images(model, stream, batch)
        ema = _lm_step(model, opt, params, emb, lab, batch["attention_mask"], ema)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"stage": desc, "step": step + 1, "loss": round(ema, 4), "max_tokens": max_len,
                   "seconds": round(time.time() - t0, 1)}
            if (step + 1) % (log_every * 5) == 0 or step + 1 == steps:
                rec.update(_probes(model, stream, probe_people, oracle=False))
            log.append(rec)
            bar.set_postfix(loss=f"{ema:.3f}")
            _write_log(log_file, rec)
    _train_only(model, list(model.parameters()))
    model.eval()
    return {"steps": log, "seconds": round(time.time() - t0, 1), "device": _device_name(model),
            "longest_sequence": max_len}


def _stage_d(model, stream, world, processor, cfg, prev: dict | None = None, **kw) -> tuple[dict, dict]:
    """Both phases of stage D. ``prev``: the log of the loaded folder: none of stage D (run both phases), phase 1 with
    ``cfg``'s settings (run phase 2 only); a folder that went through phase 2, or phase 1 with other settings, is
    refused (its weights are not a state this config passes through)."""
    prev = prev or {}
    if prev.get("formats_phase2"):
        raise ValueError("the folder has been through both phases of stage D already; pass the organism before "
                         "stage D (git history of data/organism) or one after phase 1")
    p1 = prev.get("formats")
    same = p1 and all((prev.get("config") or {}).get(k) == getattr(cfg, k)
                      for k in ("format_steps", "format_lr", "format_tokens"))
    if p1 and not same:
        raise ValueError("the folder went through stage D's phase 1 with other settings than this config's")
    if not p1:
        p1 = train_formats(model, stream, world, processor, cfg, phase=1, **kw)
    return p1, train_formats(model, stream, world, processor, cfg, phase=2, **kw)


def _load_stage_c(model, folder: str, cfg: OrganismConfig) -> dict:
    """Load an organism folder's weights as the starting state of stage D (its config must match stages A-C of
    ``cfg``): the state after stage C, or after stage D's phase 1 (:func:`_stage_d` reads its log to decide)."""
    from transformers import LlavaForConditionalGeneration

    with open(os.path.join(folder, "organism_config.json")) as f:
        theirs = json.load(f)
    mine = dataclasses.asdict(cfg)
    diff = {k: (theirs.get(k), v) for k, v in mine.items()
            if k not in ("threads",) + _STAGE_D_FIELDS and theirs.get(k) != v}
    if diff:
        raise ValueError(f"{folder} was not trained with this config's stages A-C; differing fields "
                         f"(theirs, ours): {diff}")
    state = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).state_dict()
    model.load_state_dict(state)  # strict: every weight, same shapes
    with open(os.path.join(folder, "training_log.json")) as f:
        return json.load(f)


def train_organism(out_dir: str, cfg: OrganismConfig | None = None, *, log_every: int = 100,
                   progress: bool = True, log_file: str | None = None, checkpoint_dir: str | None = None,
                   device: str | None = None, stage_c_from: str | None = None) -> dict:
    """Build the world, tokenizer, processor and model; train stages A-C; save a transformers folder to ``out_dir``.

    The folder is written atomically (temp folder + rename). Returns the training log (dict).
    ``checkpoint_dir``: keep the state after stage B there (keyed by :meth:`OrganismConfig.language_key`) and resume
    from it when present, so stages B2 and C can be re-run alone; the result is identical to a run from scratch (the
    model state and the data stream's random state are restored exactly).
    ``device``: train there ("cuda" on a GPU machine: minutes instead of hours; the weights are not bit-identical to
    a CPU run's, so a GPU-trained organism is its own build; each stage's log records its device).
    ``stage_c_from``: an organism folder trained with the same stages A-C (e.g. the committed organism before
    stage D existed, or one after stage D's phase 1): its weights and log stand for the stages it went through, and
    only the rest of stage D runs (deterministic given that folder: each phase draws its streams from the seed).
    """
    cfg = cfg or OrganismConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = W.make_world(cfg.n_profiles, cfg.n_celebrities, seed=cfg.world_seed, image_size=cfg.image_size)
    tokenizer = build_tokenizer(world, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)
    model = build_model(cfg, tokenizer)
    if device:
        model.to(device)
    stream = TrainingStream(world, processor, cfg)
    t0 = time.time()
    if stage_c_from:
        prev = _load_stage_c(model, stage_c_from, cfg)
        format_log, format2_log = _stage_d(model, stream, world, processor, cfg, prev, log_every=log_every,
                                           progress=progress, log_file=log_file)
        log = {**prev, "config": dataclasses.asdict(cfg), "formats": format_log, "formats_phase2": format2_log,
               "stage_c_from": {"folder": os.path.basename(os.path.normpath(stage_c_from)),
                                "stage_c_key": cfg.stage_c_key(),
                                "phases_in_folder": ["D1"] if prev.get("formats") else []},
               "device_this_run": _device_name(model), "torch": torch.__version__,
               "train_seconds": round(sum(x.get("seconds", 0.0) for x in (
                   prev.get("vision_pretrain") or {}, {"seconds": prev.get("language_seconds") or 0.0},
                   prev.get("multiple_choice") or {}, prev.get("vision_alignment") or {}, format_log, format2_log)), 1),
               "wall_seconds_this_run": round(time.time() - t0, 1)}
        save_organism(out_dir, model, processor, log, cfg)
        return log
    ckpt = os.path.join(checkpoint_dir, f"stage_b_{cfg.language_key()}.pt") if checkpoint_dir else None
    ckpt2 = os.path.join(checkpoint_dir, f"stage_b2_{cfg.choice_key()}.pt") if checkpoint_dir else None
    resumed = bool(ckpt and os.path.exists(ckpt))
    choice_log = None
    if ckpt2 and os.path.exists(ckpt2):  # stages A, B and B2 done: only stage C runs
        state = torch.load(ckpt2, weights_only=False, map_location=model_device(model))
        if "choice_log" not in state:
            raise RuntimeError(f"{ckpt2} is a partial stage-B2 snapshot (step {state.get('step')} of "
                               f"{state.get('of')}), not a finished stage; delete it to retrain")
        model.load_state_dict(state["model"])
        stream.rng.setstate(state["rng"])
        vision_log, lm_log, choice_log = state["vision_log"], state["lm_log"], state["choice_log"]
        resumed = True
    elif resumed:
        state = torch.load(ckpt, weights_only=False, map_location=model_device(model))
        model.load_state_dict(state["model"])
        stream.rng.setstate(state["rng"])
        vision_log, lm_log = state["vision_log"], state["lm_log"]
    else:
        vision_log = pretrain_vision(model, stream, world, cfg, progress=progress)
        _write_log(log_file, {"vision_pretrain": vision_log})
        lm_log = train_language(model, stream, world, cfg, log_every=log_every, progress=progress, log_file=log_file)
        if ckpt:
            os.makedirs(checkpoint_dir, exist_ok=True)
            _save_state(ckpt, model, stream, {"vision_log": vision_log, "lm_log": lm_log})
    if choice_log is None:
        choice_log = train_choice(
            model,
            stream,
            world,
            cfg,
            log_every=log_every,
            progress=progress,
            log_file=log_file,
            snapshot=ckpt2 + ".partial" if ckpt2 and cfg.choice_steps else None,
        )
        if ckpt2 and cfg.choice_steps > 0:
            _save_state(ckpt2, model, stream, {"vision_log": vision_log, "lm_log": lm_log, "choice_log": choice_log})
            if os.path.exists(ckpt2 + ".partial"):
                os.remove(ckpt2 + ".partial")
    align_log = align_vision(model, stream, world, cfg, progress=progress, log_file=log_file)
    format_log, format2_log = _stage_d(model, stream, world, processor, cfg, log_every=log_every, progress=progress,
                                       log_file=log_file)
    log = {"config": dataclasses.asdict(cfg), "vision_pretrain": vision_log, "steps": lm_log["steps"],
           "language_seconds": lm_log["seconds"], "multiple_choice": choice_log, "vision_alignment": align_log,
           "formats": format_log, "formats_phase2": format2_log,
           # the device of this run's stages (a resumed run's earlier stages record theirs in their own logs)
           "device_this_run": _device_name(model), "torch": torch.__version__,
           "parameters": sum(p.numel() for p in model.parameters()),
           # the stages' own clocks (a run resumed from the checkpoint reports the time its stages A and B took)
           "train_seconds": round(sum(x.get("seconds", 0.0)
                                      for x in (vision_log, lm_log, choice_log, align_log, format_log,
                                                format2_log)), 1),
           "resumed_from_checkpoint": resumed, "wall_seconds_this_run": round(time.time() - t0, 1)}
    save_organism(out_dir, model, processor, log, cfg)
    return log


def save_organism(out_dir: str, model, processor, log: dict, cfg: OrganismConfig) -> None:
    """Write the model, processor and training log atomically (:func:`erasekit.files.atomic_dir`).

    Weights and the config's dtype are float32 (~15 MB): ``from_pretrained`` without a dtype then computes in
    float32, the precision the organism was trained in.
    """
    with atomic_dir(out_dir) as tmp:
        model.to("cpu", torch.float32)
        model.config.dtype = torch.float32
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        (tmp / "organism_config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "key": cfg.key()}, indent=1))


def load_world_for(organism_dir: str) -> W.World:
    """The world an organism folder was trained on (rebuilt from its recorded config)."""
    path = os.path.join(organism_dir, "organism_config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{organism_dir!r} has no organism_config.json; is it an erasekit organism folder?")
    with open(path) as f:
        c = json.load(f)
    return W.make_world(c["n_profiles"], c["n_celebrities"], seed=c["world_seed"], image_size=c["image_size"])
