"""erasekit: test-time unlearning for multimodal LLMs by activation steering (MLLMEraser, reproduced and extended).

The method library a user imports to erase facts from their own model; the book's research code (the model
organism, its world, the step cache and the chapters' experiments) lives beside it in ``erasebook``, which imports
erasekit and never the reverse.

The front door::

    import erasekit as ek
    adapter = ek.load_model("/models/llava-1.5-7b-hf")
    eraser = ek.fit_eraser(adapter, forget=[...], retain=[...], tune=[...])  # prompts (tune: other people),
    # or ek.Fact(...)s in many forms (every fourth retain subject tunes the rules)
    eraser.generate(adapter, ["Where does Jane Doe live?"])

The modules read like the method: ``models`` (one adapter per family), ``hooks`` (capture and steer),
``directions`` (Eq. 3/7), ``attack`` (PGD, Eq. 5-6), ``nullspace`` (Eq. 8-9), ``gates`` and ``steering``
(Eq. 10-13 through the rank-one identity), ``tuning`` (layers, γ, λ rules), ``locate`` (where a prompt names its
subject), ``forms`` (a fact in many forms), ``eraser`` + ``generation`` (the front door), ``strengths`` (per-task
λ), ``artifacts`` over ``files`` and ``cache_keys``; evaluation: ``data`` / ``clear`` (MLLMU-Bench and CLEAR from
disk), ``evaluate`` (MLLMU-Bench's protocol), ``scoring``, ``tables``, ``response_quality``; training methods:
``baselines`` (GA, NPO, MMUnlearner, MANU, ...), ``asru`` with ``grpo`` and ``rewards``.
"""

import os as _os

# Passive OpenMP waiting (only takes effect when erasekit is imported before torch): on a small machine shared with
# other jobs, spinning OpenMP threads starve each other (measured: PGD 10x slower next to one other process).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .artifacts import load_artifact, save_artifact  # noqa: E402

# attack, directions and steering register their artifact kinds (erasekit.artifacts.register_artifact): every
# "import erasekit..." runs this file first, so any saved artifact loads however the package is reached.
from .attack import AdversarialImages, pgd_attack  # noqa: E402
from .clear import ClearBench  # noqa: E402
from .data import MLLMUBench  # noqa: E402
from .directions import ErasureDirection, cosine_per_layer, diff_in_means, layer_norms  # noqa: E402
from .eraser import Eraser, fit_eraser  # noqa: E402
from .evaluate import evaluate as evaluate_model  # noqa: E402  (the module erasekit.evaluate keeps its name)
from .forms import Fact, Relation  # noqa: E402
from .generation import generate  # noqa: E402
from .hooks import capture, collect_activations, steer  # noqa: E402
from .models import Adapter, adapter_for, load_model  # noqa: E402
from .nullspace import NullSpaceProjector, null_space_projector  # noqa: E402
from .scoring import is_refusal  # noqa: E402
from .steering import GatedOperator, InputAwareSteerer, constant_operators, fit_input_aware, fit_steerer  # noqa: E402
from .strengths import TaskSteering  # noqa: E402
from .tables import category_table, render_table, results_table  # noqa: E402
from .tuning import auc, choose_gate, select_layers  # noqa: E402

__all__ = [
    "Adapter", "adapter_for", "load_model",
    "Eraser", "fit_eraser", "generate", "Fact", "Relation",
    "ErasureDirection", "diff_in_means", "layer_norms", "cosine_per_layer",
    "capture", "collect_activations", "steer",
    "AdversarialImages", "pgd_attack",
    "NullSpaceProjector", "null_space_projector",
    "GatedOperator", "InputAwareSteerer", "fit_steerer", "fit_input_aware",
    "constant_operators", "fit_asru", "ASRUConfig",
    "auc", "choose_gate", "select_layers", "TaskSteering",
    "save_artifact", "load_artifact",
    "MLLMUBench", "ClearBench", "evaluate_model", "is_refusal",
    "results_table", "render_table", "category_table",
]

# ASRU trains LoRA weights (peft, the baselines' training code): loaded on first use, so "import erasekit" stays light.
_LAZY = {"fit_asru": "asru_fit", "ASRUFit": "asru_fit", "ASRUConfig": "asru"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
