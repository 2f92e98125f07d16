"""Training-based unlearning baselines of the paper's tables (App. D.3, METHOD.md §5): GA, GA_Diff, KL_Min, NPO,
MMUnlearner and MANU.

Every method takes the *vanilla* adapter and returns an :class:`UnlearnResult` whose ``adapter`` wraps a NEW model
(a deep copy, LoRA merged into it), so the evaluation harness scores it like any other adapter. The vanilla model in
memory and the organism folder on disk are never touched.

Data (MLLMU-Bench style): :func:`build_examples` turns benchmark rows into (image?, question -> ground-truth answer)
pairs for Generation_Task, Mask_Task and classification items, in VQA (with the portrait) and QA (text only) modes.

Losses (``NLL`` = mean negative log-likelihood of the answer tokens, teacher forced):

* GA       ``-NLL(D_f)``
* GA_Diff  ``-NLL(D_f) + w_r NLL(D_r)``
* KL_Min   ``-NLL(D_f) + w_kl KL(P_theta || P_theta0)`` on retain answer positions; ``P_theta0`` is the same
  network with its LoRA adapters disabled (exactly the vanilla model), so the KL term is 0 at step 0.
* NPO      ``(2/beta) log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta)`` on forget sequences (log-probs summed over the
  answer tokens). ``pi_ref`` is the vanilla model (adapters disabled) or a retain-fine-tuned "oracle" (the paper's
  "reference model trained only on D_r"; we cannot retrain from scratch, so the oracle is the vanilla model
  LoRA-fine-tuned on D_r, :func:`retain_finetune`), or any adapter you pass.
* MMUnlearner (Huo et al., 2025) -- full weights, no LoRA: LoRA updates low-rank products of every target matrix and
  cannot express "update only these entries", which is the method. Saliency ``F_f = sum grad^2`` of the NLL on
  forget VQA data (the Fisher diagonal, batch-gradient approximation) versus ``F_r`` on retain VQA + QA data
  (optionally also the forget people's text QA, the paper's "preserve textual knowledge" reformulation); the mask
  keeps the linear-layer weight entries with ``F_f > gamma F_r``. Training: ``-NLL(forget VQA) + NLL(retain)`` with
  gradients multiplied by the mask and AdamW without weight decay, so entries outside the mask stay bit-identical.
  (Their code masks only the forget step and takes a separate, unmasked retain step; we mask both, so "update only
  the salient parameters" holds exactly.)
* MANU (Liu et al., 2025) -- training-free neuron pruning: for every MLP neuron (input of ``down_proj``/``fc2``) the
  four activation statistics of MANU (mean |a|, frequency of |a| > 0.1, std, RMS) are gathered on forget and retain
  data per modality (VQA with image, QA text only; vision-tower neurons only see VQA); the score is
  ``sum_k w_k ((I_f^k + eps) / (I_r^k + eps) - 1)``; per layer and modality the top ``prune_fraction`` neurons
  with a positive score are pruned, the union over modalities. Pruning zeroes the neuron's input rows (gate/up or fc1,
  with bias) and its output column (down_proj/fc2): its activation is then exactly 0 and nothing else changes.

LoRA (METHOD.md §5): r = 16, alpha = 16, dropout 0.05 on every ``nn.Linear`` of the language model and the
projector except ``lm_head``; ``lora_vision=True`` adds the vision tower (fine for the tiny organism, whose tower is
trained from scratch with everything else). AdamW, gradient clipping at 1.0.

Each result records wall time and peak memory: ``torch.cuda.max_memory_allocated`` on GPU, else the peak resident
set size (RSS, sampled every 5 ms) above the RSS at the start -- tracemalloc does not see torch's allocations
(:func:`erasekit.measure.measure`).

Example::

    world = load_world_for("data/organism"); vanilla = load_model("data/organism")
    forget = build_examples(world.split("forget_5")); retain = build_examples(world.split("retain_95"))
    res = unlearn(vanilla, forget, retain, NPOConfig(beta=0.5))
    df = evaluate(res.adapter, world, forget_pct=5, method="NPO")

The package, one concept per module: ``data`` (examples, batches), ``configs`` (per-method configs), ``lora`` (the
trained copy, LoRA targets), ``losses`` (answer log-probs, objectives),
``loop`` (the training loop), ``mmunlearner``, ``manu``, ``run`` (:func:`unlearn`, :class:`UnlearnResult`),
``selection`` (teacher-forced metrics, :func:`sweep`, :func:`pick_config`).
"""

from __future__ import annotations

from .configs import (
                      CONFIGS,
                      GAConfig,
                      GADiffConfig,
                      KLMinConfig,
                      MANUConfig,
                      MMUnlearnerConfig,
                      NPOConfig,
                      RetainFTConfig,
                      TrainConfig,
)
from .data import MODES, TASKS, Example, build_examples, collate
from .lora import lora_targets
from .losses import answer_logprobs, unlearning_loss
from .manu import manu_scores
from .mmunlearner import mmunlearner_saliency
from .run import UnlearnResult, retain_finetune, unlearn
from .selection import answer_accuracy, answer_nll, pick_config, sweep

__all__ = [
    "TASKS", "MODES", "Example", "build_examples", "collate",
    "TrainConfig", "GAConfig", "GADiffConfig", "KLMinConfig", "NPOConfig", "RetainFTConfig", "MMUnlearnerConfig",
    "MANUConfig", "CONFIGS", "UnlearnResult",
    "lora_targets", "answer_logprobs", "unlearning_loss",
    "unlearn", "retain_finetune", "mmunlearner_saliency", "manu_scores",
    "answer_nll", "answer_accuracy", "sweep", "pick_config",
]
