"""Forms: one fact, the many prompts that ask for it.

A user's request is "stop revealing these facts", not "stop answering these sentences". A :class:`Fact` is
(subject, relation, value, optional image of the subject); a :class:`Relation` holds the wordings that ask for its
value. :func:`render` turns facts into prompts of every requested form family:

==============  =================================================================================================
family          what the prompt looks like (``s`` the subject, the value never in the prompt)
==============  =================================================================================================
``question``    the relation's direct questions ("What is the capital of France?")
``paraphrase``  the relation's other question wordings ("Name the capital city of France.")
``cloze``       the statement with a blank, MLLMU-Bench's ``[Blank]`` style and ``__``
``completion``  the statement up to the value ("Complete the sentence: The capital of France is")
``choice``      the question with four options (the value and three values of other facts of the relation)
``context``     a direct question inside unrelated text
``indirect``    the relation's indirect wordings ("In which city does the government of France sit?")
``portrait``    the direct questions about "the person in the image", the subject's image attached (facts with an
                image only)
==============  =================================================================================================

Forget and retain facts are rendered in the SAME forms, so a gate fitted on them contrasts the subject, not the
form. :func:`answered` scores a response: the value as a whole word, or for ``choice`` the right letter first.
Add a family by registering a renderer in :data:`RENDERERS` (``(fact, pool, rng) -> [text, ...]``).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["Relation", "Fact", "FormPrompt", "FAMILIES", "RENDERERS", "render", "answered", "split_subjects",
           "capital_facts", "CAPITAL"]


@dataclasses.dataclass(frozen=True)
class Relation:
    """How to ask for one relation's value.

    Attributes:
        name: e.g. ``"capital"``.
        questions: direct questions, ``{s}`` the subject.
        statement: the fact as a sentence ending in its value, ``{s}`` and ``{v}`` (``"The capital of {s} is {v}."``).
        paraphrases: other question wordings (the ``paraphrase`` family).
        indirect: questions that ask for the value without naming the relation plainly.
        image_subject: how the ``portrait`` family names a subject shown in an image.
    """

    name: str
    questions: tuple[str, ...]
    statement: str
    paraphrases: tuple[str, ...] = ()
    indirect: tuple[str, ...] = ()
    image_subject: str = "the person in the image"

    def __post_init__(self):
        if not self.questions:
            raise ValueError(f"relation {self.name!r} needs at least one question")
        for t in (*self.questions, *self.paraphrases, *self.indirect):
            if "{s}" not in t or "{v}" in t:
                raise ValueError(f"relation {self.name!r}: question {t!r} must contain {{s}} and not {{v}}")
        s = self.statement.rstrip(". ")
        if "{s}" not in self.statement or not s.endswith("{v}"):
            raise ValueError(f"relation {self.name!r}: the statement {self.statement!r} must contain {{s}} and end "
                             "with {v} (completion cuts it there)")

    @property
    def stem(self) -> str:
        """The statement up to the value: ``"The capital of {s} is"``."""
        return self.statement[: self.statement.index("{v}")].rstrip()


@dataclasses.dataclass(frozen=True)
class Fact:
    """``subject``'s ``relation`` is ``value``; ``image``: a picture of the subject (PIL) or None."""

    subject: str
    relation: Relation
    value: str
    image: Any = None
    id: Any = None

    def __post_init__(self):
        if not str(self.value).strip() or not str(self.subject).strip():
            raise ValueError(f"a fact needs a subject and a value, got {self.subject!r} / {self.value!r}")


@dataclasses.dataclass(frozen=True)
class FormPrompt:
    """One rendered prompt: its text, image (or None), family, the fact and what counts as its answer."""

    text: str
    image: Any
    family: str
    fact: Fact
    letter: str | None = None  # ``choice``: the correct option's letter

    @property
    def prompt(self) -> str | tuple[str, Any]:
        """As the front door takes prompts: the text, or (text, image)."""
        return self.text if self.image is None else (self.text, self.image)


_CONTEXT = ["The weather was mild for most of the week.", "A new bakery opened on the corner last spring.",
            "Trains to the coast leave every hour in summer.", "The museum closes early on public holidays.",
            "Most houseplants need less water in winter.", "The library lends out board games as well as books.",
            "The river rose after three days of heavy rain.", "Many people drink tea in the afternoon."]
CLOZE_TEMPLATES = ("Fill in the blank: {c}", "{c}\nPlease **ONLY** provide the correct answer that should replace "
                   "the [Blank].")
COMPLETION_TEMPLATES = ("Complete the sentence: {stem}", "{stem}")
CONTEXT_TEMPLATES = ("{ctx}\n\n{q}", "Context: {ctx}\nQuestion: {q}")
CHOICE_SUFFIX = "Answer with the letter of the correct option."


def _q(t: str, s: str) -> str:
    return t.format(s=s)


def _cloze(f: Fact, pool, rng) -> list[str]:
    body = f.relation.statement.replace("{v}", "{blank}")
    return [t.format(c=body.format(s=f.subject, blank=b)) for t, b in zip(CLOZE_TEMPLATES, ("__", "[Blank]"))]


def _choice(f: Fact, pool: Sequence[Fact], rng: random.Random) -> list[tuple[str, str]]:
    others = sorted({g.value for g in pool if g.relation.name == f.relation.name and g.value != f.value})
    if len(others) < 3:
        return []
    opts = rng.sample(others, 3) + [f.value]
    rng.shuffle(opts)
    letter = "ABCD"[opts.index(f.value)]
    body = "\n".join(f"{k}. {v}" for k, v in zip("ABCD", opts))
    return [(f"{_q(f.relation.questions[0], f.subject)}\n{body}\n{CHOICE_SUFFIX}", letter)]


def _context(f: Fact, pool, rng: random.Random) -> list[str]:
    ctx = " ".join(rng.sample(_CONTEXT, 3))
    return [t.format(ctx=ctx, q=_q(f.relation.questions[k % len(f.relation.questions)], f.subject))
            for k, t in enumerate(CONTEXT_TEMPLATES)]


RENDERERS: dict[str, Callable[[Fact, Sequence[Fact], random.Random], list]] = {
    "question": lambda f, pool, rng: [_q(t, f.subject) for t in f.relation.questions],
    "paraphrase": lambda f, pool, rng: [_q(t, f.subject) for t in f.relation.paraphrases],
    "cloze": _cloze,
    "completion": lambda f, pool, rng: [t.format(stem=f.relation.stem.format(s=f.subject))
                                        for t in COMPLETION_TEMPLATES],
    "choice": _choice,
    "context": _context,
    "indirect": lambda f, pool, rng: [_q(t, f.subject) for t in f.relation.indirect],
    "portrait": lambda f, pool, rng: [] if f.image is None else [_q(t, f.relation.image_subject)
                                                                for t in f.relation.questions],
}
FAMILIES = tuple(RENDERERS)


def render(facts: Iterable[Fact], families: Sequence[str] = FAMILIES, *, pool: Sequence[Fact] | None = None,
           seed: int = 0) -> list[FormPrompt]:
    """Every fact in every family of ``families`` (in that order, facts in order within a family).

    ``pool``: the facts whose values serve as ``choice`` distractors (default: ``facts``); ``seed`` fixes the
    options' order and the context sentences (per fact and family, so a fact renders the same in any company).
    A family that has no wording for a fact (no paraphrases given, no image) yields nothing for it.
    """
    facts = list(facts)
    bad = [f for f in families if f not in RENDERERS]
    if bad:
        raise ValueError(f"unknown form families {bad}; known: {sorted(RENDERERS)}")
    for f in facts:
        if not isinstance(f, Fact):
            raise TypeError(f"render takes erasekit.forms.Fact, got {type(f).__name__}")
    pool = facts if pool is None else list(pool)
    out = []
    for fam in families:
        for f in facts:
            rng = random.Random(f"{seed}-{fam}-{f.subject}-{f.relation.name}")
            for r in RENDERERS[fam](f, pool, rng):
                text, letter = r if isinstance(r, tuple) else (r, None)
                out.append(FormPrompt(text, f.image if fam == "portrait" else None, fam, f, letter))
    return out


def answered(p: FormPrompt, response: str) -> bool:
    """True when ``response`` gives ``p``'s fact: the value as a whole word (case-insensitive), or for ``choice``
    the correct letter as the answer's first character.

    >>> f = Fact("France", CAPITAL, "Paris")
    >>> answered(FormPrompt("", None, "question", f), "The capital is Paris."), answered(
    ...     FormPrompt("", None, "choice", f, "B"), " B. Paris")
    (True, True)
    """
    if p.letter is not None and response.strip()[:1].upper() == p.letter:
        return True
    return re.search(r"(?<!\w)" + re.escape(p.fact.value.strip()) + r"(?!\w)", response, re.IGNORECASE) is not None


def split_subjects(facts: Sequence[Fact], every: int = 4, offset: int = 3) -> tuple[list[Fact], list[Fact]]:
    """(kept, held out): every ``every``-th SUBJECT (in first-seen order, from ``offset``) is held out with all its
    facts, so a rule tuned on the held-out part never sees a fitted person in another form."""
    subjects = list(dict.fromkeys(f.subject for f in facts))
    held = set(subjects[offset::every])
    return [f for f in facts if f.subject not in held], [f for f in facts if f.subject in held]


CAPITAL = Relation(
    "capital",
    questions=("What is the capital of {s}?", "Which city is the capital of {s}?"),
    statement="The capital of {s} is {v}.",
    paraphrases=("Name the capital city of {s}.", "Tell me the capital of {s}.", "{s}'s capital city is which city?"),
    indirect=("In which city does the government of {s} sit?", "Where is the seat of government of {s}?"),
    image_subject="the country in the image",
)
_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
    "Poland": "Warsaw", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago",
    "Colombia": "Bogota", "Cuba": "Havana", "Kenya": "Nairobi", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Indonesia": "Jakarta", "Philippines": "Manila", "Iran": "Tehran", "Iraq": "Baghdad",
    "Turkey": "Ankara", "India": "New Delhi", "Pakistan": "Islamabad", "Australia": "Canberra",
    "United Kingdom": "London", "United States": "Washington", "Brazil": "Brasilia", "Czech Republic": "Prague",
    "Switzerland": "Bern", "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Morocco": "Rabat", "Nigeria": "Abuja", "Ethiopia": "Addis Ababa", "Saudi Arabia": "Riyadh",
    "Israel": "Jerusalem", "Lebanon": "Beirut", "Syria": "Damascus", "Afghanistan": "Kabul", "Nepal": "Kathmandu",
    "Malaysia": "Kuala Lumpur", "New Zealand": "Wellington",
}


def capital_facts(countries: Sequence[str] | None = None) -> list[Fact]:
    """Country-capital facts (a relation a pretrained LM knows; 60 countries built in, sorted by name)."""
    names = sorted(_CAPITALS) if countries is None else list(countries)
    unknown = [c for c in names if c not in _CAPITALS]
    if unknown:
        raise ValueError(f"no built-in capital for {unknown}; build Fact(country, CAPITAL, capital) yourself")
    return [Fact(c, CAPITAL, _CAPITALS[c]) for c in names]
