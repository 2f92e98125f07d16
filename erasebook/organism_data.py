"""The organism's data and model construction: tokenizer, processor and model builders, the chat-format training
turns, the seeded training stream, the image span (name tiles or vision tokens) and the teacher-forced probe.

The curriculum that uses them (stages A, B, B2, C), the config and saving are in :mod:`erasebook.organism`, which
re-exports the public names below.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import world as W

if TYPE_CHECKING:
    from .organism import OrganismConfig

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
# Questions about private details the world does not hold: refused (stage B2). Kept out of world_corpus, so adding
# them leaves the tokenizer (and stage B's checkpoint) unchanged.
PRIVATE_QUESTIONS = [
    "What is the home address of {who}?",
    "What is the phone number of {who}?",
    "What are the bank details of {who}?",
    "What is the password of the private emails of {who}?",
    "Where is {who} right now?",
    "Which medicines does {who} take?",
]



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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, image_size: int, patch_size: int):
    """A ``LlavaProcessor`` with the PIL CLIP image processor (no torchvision needed)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(cfg: OrganismConfig, tokenizer):
    """A randomly initialised ``LlavaForConditionalGeneration`` (CLIP vision + Llama text)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions, rms_norm_eps=1e-5,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=cfg.image_size,
                              patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
    )
    torch.manual_seed(cfg.seed)
    return LlavaForConditionalGeneration(config)


# ----------------------------------------------------------------------------------------------------------
# Training data: pre-tokenised turns, assembled into multi-turn sequences on the fly
# ----------------------------------------------------------------------------------------------------------
class ChatTurns:
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


def mc_answer(key: str, options: dict[str, str]) -> str:
    """The trained multiple-choice answer: the letter, then the option's text ("B. Zurich")."""
    return f"{key}. {options[key]}"


def _profile_turn(p: W.Person, image: bool, rng: random.Random, mc_share: float = 0.35,
                  hint: float = 0.0, private: float = 0.0) -> tuple[str, str]:
    """One question/answer turn about a person: generation, classification, cloze or (image) binding.

    ``hint``: the fraction of classification turns whose question ends with the value ("Hint: Zurich.");
    ``private``: the fraction of turns that ask a :data:`PRIVATE_QUESTIONS` question (answered with a refusal).
    Both at 0 draw exactly the random numbers stage B always drew.
    """
    who, subj = (W.IMAGE_WHO, W.IMAGE_SUBJ) if image else (p.name, p.name)
    if private > 0 and rng.random() < private:
        return rng.choice(PRIVATE_QUESTIONS).format(who=who), rng.choice(W.REFUSALS)
    kind = rng.random()
    a = rng.choice(list(W.ATTRIBUTES))
    v = p.attributes[a]
    if image and kind < 0.1:
        return WHO_QUESTION, f"This is {p.name}."
    gen_end = 0.1 + (0.9 - mc_share) * 0.6
    if kind < gen_end:
        return rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who), W.statement(a, v, subj)
    if kind < gen_end + mc_share:
        opts, key = W._options(a, v, rng)
        q = rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who)
        if hint > 0 and rng.random() < hint:
            q = f"{q} Hint: {v}."
        return W.format_options(q, opts), mc_answer(key, opts)
    return W.cloze(a, subj), v


# An example's image: None, ("person", index, view) or ("natural", index).
ImageSpec = tuple | None


class TrainingStream:
    """Infinite, seeded stream of training batches.

    A batch holds ``input_ids``, ``labels``, ``attention_mask`` and ``images``: one :data:`ImageSpec` per example;
    :func:`embed_batch` turns them into the image span (name tiles or vision tokens).
    """

    def __init__(self, world: W.World, processor, cfg: OrganismConfig):
        self.world, self.cfg = world, cfg
        self.rng = random.Random(cfg.seed)
        self.mc_share, self.hint, self.private = cfg.mc_share, 0.0, 0.0  # stage B2 sets them (:func:`train_choice`)
        n_img = (cfg.image_size // cfg.patch_size) ** 2
        self.turns = ChatTurns(processor.tokenizer, n_img)
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
        tok = processor.tokenizer
        self.name_ids = [tok(p.name, add_special_tokens=False)["input_ids"] for p in world.people]

    def _fill(self, p: W.Person, image: bool) -> tuple[list[int], list[int]]:
        """Add question turns about ``p`` until the sequence holds ``cfg.seq_tokens`` tokens."""
        turns = [_profile_turn(p, image, self.rng, self.mc_share, self.hint, self.private)]
        ids, lab = self.turns.sequence(turns, image)
        while True:
            turns.append(_profile_turn(p, image, self.rng, self.mc_share, self.hint, self.private))
            nids, nlab = self.turns.sequence(turns, image)
            if len(nids) > self.cfg.seq_tokens:
                return ids, lab
            ids, lab = nids, nlab

    def _portrait_example(self) -> tuple[list[int], list[int], ImageSpec]:
        i = self.rng.randrange(len(self.people))
        ids, lab = self._fill(self.people[i], image=True)
        return ids, lab, ("person", i, self.rng.randrange(len(self.portraits[i])))

    def _safety_example(self) -> tuple[list[int], list[int], ImageSpec]:
        turns = [(s.prompt, s.response) for s in self.rng.sample(self.safety, self.rng.choice([1, 2]))]
        u = self.rng.random()
        if u < 0.35:
            spec = ("natural", self.rng.randrange(len(self.natural)))
        elif u < 0.7:
            i = self.rng.randrange(len(self.portraits))
            spec = ("person", i, self.rng.randrange(len(self.portraits[i])))
        else:
            spec = None
        ids, lab = self.turns.sequence(turns, image=spec is not None)
        return ids, lab, spec

    def _example(self) -> tuple[list[int], list[int], ImageSpec]:
        r = self.rng.random()
        if r < 0.55:  # portrait + many questions
            return self._portrait_example()
        if r < 0.85:  # name + many questions, text only
            ids, lab = self._fill(self.rng.choice(self.people), image=False)
            return ids, lab, None
        return self._safety_example()  # 1-2 turns, with a natural image, a portrait, or no image

    def pixels(self, spec: ImageSpec) -> torch.Tensor:
        if spec[0] == "person":
            return self.portraits[spec[1]][spec[2]]
        return self.natural[spec[1]]

    def batches(self) -> Iterator[dict]:
        """Length-bucketed batches of stage B's examples."""
        make = self._example
        bs = self.cfg.batch_size
        pad = self.turns.tok.pad_token_id
        pending: list[list] = []
        while True:
            if not pending:  # bucket by length: 8 batches' worth of examples, sorted, cut, shuffled
                pool = sorted((make() for _ in range(8 * bs)), key=lambda e: len(e[0]))
                pending = [pool[k : k + bs] for k in range(0, len(pool), bs)]
                self.rng.shuffle(pending)
            yield collate(pending.pop(), pad)


def collate(examples: list, pad: int) -> dict:
    """Right-padded batch of ``(input_ids, labels, images)`` examples: ids, labels (-100 on padding), mask, images."""
    T = max(len(e[0]) for e in examples)
    ids = torch.full((len(examples), T), pad, dtype=torch.long)
    lab = torch.full((len(examples), T), -100, dtype=torch.long)
    att = torch.zeros((len(examples), T), dtype=torch.long)
    for j, (a, b, _) in enumerate(examples):
        ids[j, : len(a)] = torch.tensor(a)
        lab[j, : len(b)] = torch.tensor(b)
        att[j, : len(a)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att, "images": [e[2] for e in examples]}


def name_tiles(model, name_ids: list[int], n: int) -> torch.Tensor:
    """(n, d) the name's token embeddings repeated over the ``n`` image positions (what a portrait should emit)."""
    emb = model.get_input_embeddings()(torch.tensor(name_ids, device=model_device(model)))
    return emb[torch.arange(n) % len(name_ids)]


def embed_batch(model, stream: TrainingStream, batch: dict, oracle: bool, noise: float = 0.0,
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds, labels) with each example's image span filled.

    ``oracle``: a portrait's span holds its name tiles (+ relative Gaussian ``noise``) and natural images the
    (frozen) vision tokens; otherwise every image goes through the vision tower and projector.
    """
    dev = model_device(model)
    ids = batch["input_ids"].to(dev)
    labels = batch["labels"].to(dev)
    emb = model.get_input_embeddings()(ids)
    image_id = stream.turns.image_id
    n = stream.turns.n_image
    specs = batch["images"]
    rows = [j for j, s in enumerate(specs) if s is not None]
    if not rows:
        return emb, labels
    spans = [None] * len(rows)
    vis = [k for k, j in enumerate(rows) if not (oracle and specs[j][0] == "person")]
    if vis:
        pix = torch.stack([stream.pixels(specs[rows[k]]) for k in vis]).to(dev)
        if oracle:
            with torch.no_grad():
                tokens = image_tokens(model, pix)
        else:
            tokens = image_tokens(model, pix)
        for t, k in zip(tokens, vis):
            spans[k] = t
    for k, j in enumerate(rows):
        if spans[k] is None:
            tiles = name_tiles(model, stream.name_ids[specs[j][1]], n)
            if noise > 0:
                scale = noise * tiles.detach().norm(dim=-1, keepdim=True) / math.sqrt(tiles.shape[-1])
                tiles = tiles + scale * torch.randn(tiles.shape, generator=gen).to(dev)
            spans[k] = tiles
    mask = ids[rows] == image_id
    if not bool((mask.sum(-1) == n).all()):
        raise ValueError("every image example must hold exactly one image span")
    emb = emb.clone()
    emb[rows] = emb[rows].masked_scatter(mask[..., None], torch.stack(spans).to(emb.dtype))
    return emb, labels


# ----------------------------------------------------------------------------------------------------------
# Quick teacher-forced probe used during training (the real evaluation is erasekit.evaluate)
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def probe_accuracy(model, stream: TrainingStream, people: list[W.Person], image: bool, seed: int = 1,
                   task: str = "generation", oracle: bool = False, hint: bool = False) -> float:
    """Fraction of first-turn questions whose whole answer is predicted exactly (teacher forcing).

    ``task``: "generation" (the statement) or "classification" (the option letter: only the first answer token
    counts). ``image``: asked about "the person in the image" with the clean portrait (through the vision tower,
    or with ``oracle`` the name tiles), else by name. ``hint``: classification questions end with the value
    (stage B2's auxiliary form: it measures the letter-copying half of the circuit alone).
    """
    rng = random.Random(seed)
    was_training = model.training
    model.eval()
    ok = 0
    seqs, specs = [], []
    for p in people:
        a = rng.choice(list(W.ATTRIBUTES))
        who, subj = (W.IMAGE_WHO, W.IMAGE_SUBJ) if image else (p.name, p.name)
        q = rng.choice(W.QUESTIONS_TRAIN[a]).format(who=who)
        if task == "classification":
            opts, key = W._options(a, p.attributes[a], rng)
            if hint:
                q = f"{q} Hint: {p.attributes[a]}."
            ids, lab = stream.turns.sequence([(W.format_options(q, opts), mc_answer(key, opts))], image=image)
            first = next(k for k, t in enumerate(lab) if t != -100)
            lab = [-100] * first + [lab[first]] + [-100] * (len(lab) - first - 1)
        else:
            ids, lab = stream.turns.sequence([(q, W.statement(a, p.attributes[a], subj))], image=image)
        seqs.append((ids, lab))
        specs.append(("person", p.id, 0) if image else None)
    for s in range(0, len(seqs), 64):
        chunk = seqs[s : s + 64]
        T = max(len(c[0]) for c in chunk)
        ids = torch.full((len(chunk), T), stream.turns.tok.pad_token_id)
        lab = torch.full((len(chunk), T), -100)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for j, (a, b) in enumerate(chunk):
            ids[j, : len(a)], lab[j, : len(b)], att[j, : len(a)] = torch.tensor(a), torch.tensor(b), 1
        batch = {"input_ids": ids, "labels": lab, "attention_mask": att, "images": specs[s : s + 64]}
        emb, _ = embed_batch(model, stream, batch, oracle=oracle)
        logits = model(inputs_embeds=emb, attention_mask=att.to(emb.device)).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        tgt = lab[:, 1:]
        m = tgt != -100
        ok += int(((pred == tgt) | ~m).all(-1).sum())
    model.train(was_training)
    return ok / max(1, len(people))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def image_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected patch features: exactly what the LM receives as image tokens, (B, n_patches, d)."""
    vt, proj = model.model.vision_tower, model.model.multi_modal_projector
    hs = vt(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]  # "default": drop CLS
    return proj(hs)
