"""The model organism: a tiny LLaVA (real ``transformers`` classes) trained from scratch on the synthetic world.

Design (why it learns on 2 CPU cores where a naive setup stays at chance, see shared/ORGANISM-NOTES.md):
- a byte-level BPE tokenizer trained on the world's text, so held-out phrasings are made of known sub-words;
- 32×32 portraits, patch 8, 16 image tokens;
- *multi-turn* training sequences: one portrait (or one name) with many questions about that person in one
  sequence, so the image is encoded once for many facts (the benchmark's single-question prompts are exactly the
  first turn of such a conversation, and every question appears in first position equally often);
- a vision identity pre-stage (a linear person classifier on the projected patch features, discarded after),
  because the LM loss alone never taught the from-scratch vision tower to tell the portraits apart;
- a binding question ("Who is the person in the image?" → name) mixed in, so image → identity is learned
  alongside name → fact;
- safety turns (harmful → refusal, jailbreak-wrapped → compliance, harmless → help) with and without images.

The result is saved as a standard transformers folder that ``from_pretrained`` and ``AutoProcessor`` load offline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from . import world as W
from .files import atomic_dir

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% if not loop.first %} {% endif %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% else %} ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WHO_QUESTION = "Who is the person in the image?"


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
    seed: int = 0
    threads: int | None = None

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("threads")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Tokenizer and processor
# ----------------------------------------------------------------------------------------------------------
def world_corpus(world: W.World) -> list[str]:
    """All text the organism may see: profiles in every format, safety data, templates."""
    texts = [W.biography(p) for p in world.people]
    for p in world.people:
        for a, v in p.attributes.items():
            for who, subj in ((W.IMAGE_WHO, W.IMAGE_SUBJ), (p.name, p.name)):
                texts += [t.format(who=who) for t in W.QUESTIONS_TRAIN[a] + W.QUESTIONS_TEST[a]]
                texts += [W.statement(a, v, subj), W.cloze(a, subj)]
    texts += [s.prompt + " " + s.response for s in W.safety_prompts(world)]
    texts += [W.CLASSIFY_SUFFIX, WHO_QUESTION] + [f"{k}. " for k in W.OPTION_KEYS]
    texts += [" ".join(v) for v in W.ATTRIBUTES.values()]
    # The chat scaffolding appears in every sequence: make sure BPE gives it whole tokens.
    texts += ["USER: ASSISTANT: This is USER: ASSISTANT:"] * 200
    return texts


def build_tokenizer(world: W.World, vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on the world's text (no unknown words, ever)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(world_corpus(world), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, image_size: int, patch_size: int):
    """A ``LlavaProcessor`` with the PIL CLIP image processor (no torchvision needed)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(cfg: OrganismConfig, tokenizer):
    """A randomly initialised ``LlavaForConditionalGeneration`` (CLIP vision + Llama text)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=512, rms_norm_eps=1e-5,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=cfg.image_size,
                              patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=(cfg.image_size // cfg.patch_size) ** 2)
    torch.manual_seed(cfg.seed)
    return LlavaForConditionalGeneration(config)


# ----------------------------------------------------------------------------------------------------------
# Training data: pre-tokenised turns, assembled into multi-turn sequences on the fly
# ----------------------------------------------------------------------------------------------------------
class _Turns:
    """Tokenises user/assistant turns exactly as the chat template + tokenizer would (checked in tests)."""

    def __init__(self, tokenizer, n_image_tokens: int):
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.n_image = n_image_tokens
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            self._cache[text] = ids
        return ids

    def sequence(self, turns: list[tuple[str, str]], image: bool) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for a conversation; labels are -100 except assistant answers and </s>."""
        ids = [self.tok.bos_token_id]
        labels = [-100]
        for i, (q, a) in enumerate(turns):
            user = ("" if i == 0 else " ") + "USER: "
            uid = self._ids(user)
            if i == 0 and image:
                uid = uid + [self.image_id] * self.n_image + self._ids("\n" + q)
            else:
                uid = self._ids(user + q)
            head = self._ids(" ASSISTANT:")
            ans = self._ids(" " + a) + [self.tok.eos_token_id]
            ids += uid + head + ans
            labels += [-100] * (len(uid) + len(head)) + ans
        return ids, labels


def _profile_turn(p: W.Person, image: bool, rng: random.Random) -> tuple[str, str]:
    """One question/answer turn about a person: generation, classification, cloze or (image) binding."""
    who, subj = (W.IMAGE_WHO, W.IMAGE_SUBJ) if image else (p.name, p.name)
    kind = rng.random()
    a = rng.choice(list(W.ATTRIBUTES))
    v = p.attributes[a]
    if image and kind < 0.1:
        return WHO_QUESTION, f"This is {p.name}."
    if kind < 0.55:
        return rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who), W.statement(a, v, subj)
    if kind < 0.8:
        opts, key = W._options(a, v, rng)
        return W.format_options(rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who), opts), key
    return W.cloze(a, subj), v


class TrainingStream:
    """Infinite, seeded stream of training batches (input_ids, labels, attention_mask, pixel_values, has_image)."""

    def __init__(self, world: W.World, processor, cfg: OrganismConfig):
        self.world, self.cfg = world, cfg
        self.rng = random.Random(cfg.seed)
        n_img = (cfg.image_size // cfg.patch_size) ** 2
        self.turns = _Turns(processor.tokenizer, n_img)
        ip = processor.image_processor
        self._pix = lambda im: torch.as_tensor(np.asarray(ip(im, return_tensors="np")["pixel_values"][0]))
        # Pre-render every person's portrait and augmented variants once (rendering is the slow part).
        aug_rng = random.Random(f"{cfg.seed}-augment")
        self.portraits: list[torch.Tensor] = []
        for p in world.people:
            ims = [world.portrait(p)] + [world.portrait(p, W.random_transform(aug_rng)) for _ in range(cfg.n_augment)]
            self.portraits.append(torch.stack([self._pix(im) for im in ims]))
        self.natural = torch.stack([self._pix(im) for im in W.natural_images(cfg.image_size).values()])
        self.safety = [s for s in W.safety_prompts(world) if not s.heldout]
        self.people = world.people

    def _fill(self, p: W.Person, image: bool) -> tuple[list[int], list[int]]:
        """Add question turns about ``p`` until the sequence holds ``cfg.seq_tokens`` tokens."""
        turns = [_profile_turn(p, image, self.rng)]
        ids, lab = self.turns.sequence(turns, image)
        while True:
            turns.append(_profile_turn(p, image, self.rng))
            nids, nlab = self.turns.sequence(turns, image)
            if len(nids) > self.cfg.seq_tokens:
                return ids, lab
            ids, lab = nids, nlab

    def _example(self) -> tuple[list[int], list[int], torch.Tensor | None]:
        r = self.rng.random()
        if r < 0.55:  # portrait + many questions
            i = self.rng.randrange(len(self.people))
            ids, lab = self._fill(self.people[i], image=True)
            v = self.portraits[i]
            return ids, lab, v[self.rng.randrange(len(v))]
        if r < 0.85:  # name + many questions, text only
            ids, lab = self._fill(self.rng.choice(self.people), image=False)
            return ids, lab, None
        # safety: 1-2 turns, with a natural image, a portrait, or no image
        turns = [(s.prompt, s.response) for s in self.rng.sample(self.safety, self.rng.choice([1, 2]))]
        u = self.rng.random()
        if u < 0.35:
            img = self.natural[self.rng.randrange(len(self.natural))]
        elif u < 0.7:
            v = self.portraits[self.rng.randrange(len(self.portraits))]
            img = v[self.rng.randrange(len(v))]
        else:
            img = None
        ids, lab = self.turns.sequence(turns, image=img is not None)
        return ids, lab, img

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        pad = self.turns.tok.pad_token_id
        bs = self.cfg.batch_size
        pending: list[list] = []
        while True:
            if not pending:  # bucket by length: 8 batches' worth of examples, sorted, cut, shuffled
                pool = sorted((self._example() for _ in range(8 * bs)), key=lambda e: len(e[0]))
                pending = [pool[k : k + bs] for k in range(0, len(pool), bs)]
                self.rng.shuffle(pending)
            ex = pending.pop()
            T = max(len(e[0]) for e in ex)
            ids = torch.full((len(ex), T), pad, dtype=torch.long)
            lab = torch.full((len(ex), T), -100, dtype=torch.long)
            att = torch.zeros((len(ex), T), dtype=torch.long)
            for j, (a, b, _) in enumerate(ex):
                ids[j, : len(a)] = torch.tensor(a)
                lab[j, : len(b)] = torch.tensor(b)
                att[j, : len(a)] = 1
            imgs = [e[2] for e in ex if e[2] is not None]
            batch = {"input_ids": ids, "labels": lab, "attention_mask": att}
            if imgs:
                batch["pixel_values"] = torch.stack(imgs)
            yield batch


# ----------------------------------------------------------------------------------------------------------
# Quick teacher-forced probe used during training (the real evaluation is erasekit.evaluate)
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def probe_accuracy(model, stream: TrainingStream, people: list[W.Person], image: bool, seed: int = 1) -> float:
    """Fraction of first-turn generation questions whose whole answer is predicted exactly (teacher forcing)."""
    rng = random.Random(seed)
    model.eval()
    ok = 0
    seqs, imgs = [], []
    for p in people:
        a = rng.choice(list(W.ATTRIBUTES))
        who, subj = (W.IMAGE_WHO, W.IMAGE_SUBJ) if image else (p.name, p.name)
        q = rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who)
        seqs.append(stream.turns.sequence([(q, W.statement(a, p.attributes[a], subj))], image=image))
        if image:
            imgs.append(stream.portraits[p.id][0])
    for s in range(0, len(seqs), 64):
        chunk = seqs[s : s + 64]
        T = max(len(c[0]) for c in chunk)
        ids = torch.full((len(chunk), T), stream.turns.tok.pad_token_id)
        lab = torch.full((len(chunk), T), -100)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for j, (a, b) in enumerate(chunk):
            ids[j, : len(a)], lab[j, : len(b)], att[j, : len(a)] = torch.tensor(a), torch.tensor(b), 1
        kw = {"pixel_values": torch.stack(imgs[s : s + 64])} if image else {}
        logits = model(input_ids=ids, attention_mask=att, **kw).logits
        pred = logits[:, :-1].argmax(-1)
        tgt = lab[:, 1:]
        m = tgt != -100
        ok += int(((pred == tgt) | ~m).all(-1).sum())
    model.train()
    return ok / max(1, len(people))


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def _image_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected patch features: exactly what the LM receives as image tokens, (B, n_patches, d)."""
    vt, proj = model.model.vision_tower, model.model.multi_modal_projector
    hs = vt(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]  # "default": drop CLS
    return proj(hs)


def _image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image tokens mean-pooled over patches (the identity head's input)."""
    return _image_tokens(model, pixel_values).mean(1)


def pretrain_vision(model, stream: TrainingStream, world: W.World, cfg: OrganismConfig, progress: bool = True) -> dict:
    """Identity pre-stage: train vision tower + projector with a linear person-classification head.

    Uses the same pre-rendered (augmented) training portraits as the LM stage; reports accuracy on the clean
    portraits and on the Test_Set's transformed portraits (never trained on). Returns a small log.
    """
    from tqdm.auto import tqdm

    if cfg.vision_steps <= 0:
        return {}
    n = len(world.people)
    head = torch.nn.Linear(cfg.hidden_size, n)
    vparams = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(vparams + list(head.parameters()), lr=cfg.lr, weight_decay=0.0)
    pix = torch.stack(stream.portraits)  # (N, 1 + n_augment, 3, H, W)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for step in tqdm(range(cfg.vision_steps), disable=not progress, desc="vision identity", mininterval=5):
        who = torch.randint(0, n, (cfg.vision_batch,), generator=gen)
        view = torch.randint(0, pix.shape[1], (cfg.vision_batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(_image_features(model, pix[who, view])), who)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        ids = torch.arange(n)
        tokens = _image_tokens(model, pix[:, 0])
        train_acc = (head(tokens.mean(1)).argmax(-1) == ids).float().mean().item()
        test = torch.stack([stream._pix(world.test_images(p)[0]) for p in world.people])
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


def train_organism(out_dir: str, cfg: OrganismConfig | None = None, *, log_every: int = 100,
                   progress: bool = True, log_file: str | None = None) -> dict:
    """Build the world, tokenizer, processor and model; train; save a transformers folder to ``out_dir``.

    The folder is written atomically (temp folder + rename). Returns the training log (dict).
    """
    from tqdm.auto import tqdm

    cfg = cfg or OrganismConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = W.make_world(cfg.n_profiles, cfg.n_celebrities, seed=cfg.world_seed, image_size=cfg.image_size)
    tokenizer = build_tokenizer(world, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)
    model = build_model(cfg, tokenizer)
    stream = TrainingStream(world, processor, cfg)
    vision_log = pretrain_vision(model, stream, world, cfg, progress=progress)
    if log_file and vision_log:
        with open(log_file, "a") as f:
            f.write(json.dumps({"vision_pretrain": vision_log}) + "\n")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    probe_people = random.Random(7).sample(world.people, min(200, len(world.people)))
    log = {"config": dataclasses.asdict(cfg), "vision_pretrain": vision_log, "steps": [], "parameters": sum(p.numel() for p in model.parameters())}
    model.train()
    t0 = time.time()
    it = stream.batches()
    bar = tqdm(range(cfg.steps), disable=not progress, desc="organism", mininterval=5)
    ema = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = next(it)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": round(ema, 4), "seconds": round(time.time() - t0, 1)}
            if (step + 1) % (log_every * 5) == 0 or step + 1 == cfg.steps:
                rec["probe_image"] = probe_accuracy(model, stream, probe_people, True)
                rec["probe_text"] = probe_accuracy(model, stream, probe_people, False)
            log["steps"].append(rec)
            bar.set_postfix(loss=f"{ema:.3f}")
            if log_file:
                with open(log_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    log["train_seconds"] = round(time.time() - t0, 1)
    save_organism(out_dir, model, processor, log, cfg)
    return log


def save_organism(out_dir: str, model, processor, log: dict, cfg: OrganismConfig) -> None:
    """Write the model (float16 weights, ≤ 20 MB), processor and training log atomically (:func:`erasekit.files.atomic_dir`)."""
    with atomic_dir(out_dir) as tmp:
        model.to(torch.float16).save_pretrained(tmp)
        model.to(torch.float32)
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
