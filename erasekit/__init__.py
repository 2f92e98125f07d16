"""erasekit: test-time unlearning for multimodal LLMs by activation steering (MLLMEraser, reproduced and extended).

The module list reads like the method: ``models`` (one adapter per family), ``hooks`` (capture and steer),
``directions`` (Eq. 3/7), ``attack`` (PGD, Eq. 5-6), ``nullspace``, ``gates`` and ``steering`` (Eq. 10-13 through the
rank-one identity), ``artifacts`` (safetensors + JSON sidecar) over ``files`` (atomic writes) and ``cache_keys``,
``world`` / ``organism`` / ``data`` (the embedded default; ``clear`` reads CLEAR), ``evaluate`` (MLLMU-Bench
protocol) with ``scoring`` (judging a response), ``tables`` (Table-1 layout) and ``safety`` (refusal check);
``response_quality`` (contextual refusals, hallucination, diversity, fluency) and ``rewards`` (the refusal-boundary
reward).
"""

import os as _os

# Passive OpenMP waiting (only takes effect when erasekit is imported before torch): on a small machine shared with
# other jobs, spinning OpenMP threads starve each other (measured: PGD 10x slower next to one other process).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .artifacts import ArtifactError, artifact_exists, artifact_paths, load_artifact, read_sidecar, save_artifact
# attack, directions and steering also register their artifact kinds (erasekit.artifacts.register_artifact): every
# "import erasekit..." runs this file first, so any saved artifact loads however the package is reached.
from .attack import AdversarialImages, PGDResult, harmful_target_loss, pgd_attack, target_token_loss
from .baselines import (CONFIGS, Example, GAConfig, GADiffConfig, KLMinConfig, MANUConfig, MMUnlearnerConfig,
                        NPOConfig, RetainFTConfig, TrainConfig, UnlearnResult, answer_accuracy, answer_nll,
                        build_examples, pick_config, retain_finetune, sweep, unlearn)
from .cache_keys import cache_key
from .data import MLLMUBench, load_split, split_files, write_rows, write_world
from .clear import ClearBench
from .directions import ErasureDirection, cosine_per_layer, diff_in_means, layer_norms, project_out
from .evaluate import BENCHMARK, ZERO_SHOT
from .evaluate import evaluate as evaluate_model  # the module erasekit.evaluate keeps its name
from .hooks import capture, check_layers, collect_activations, steer
from .models import (Adapter, CausalLMAdapter, LlavaAdapter, ModelAdapter, Qwen3VLAdapter, Qwen25VLAdapter, adapter_for,
                     load_model, pick_device_dtype)
from .nullspace import NullSpaceProjector, null_space_projector
from .heldout import ProfilePartition, partition_profiles
from .safety import evaluate_safety, refusal_rates
from .scoring import CATEGORIES, categorize, is_degenerate, is_refusal
from .response_quality import (distinct_n, fluency_nll, hallucination, is_contextual_refusal, quality_table,
                               repetition_rate, rigid_refusal_share)
from .rewards import RewardWeights, boundary_reward, quality_reward
from .steering import (GATES, GatedOperator, InputAwareMap, InputAwareSteerer, MLPMap, ablation_operator,
                       constant_operator, constant_operators, dense_gate_reference, fit_contrastive_gate, fit_gate,
                       fit_input_aware, fit_mlp, fit_mlp_steerer, fit_steerer)
from .tables import category_table, render_table, results_table
from .tuning import auc, choose_gate, heldout_gate_auc, select_layers
from .session import Session, load_session
from .strengths import PAPER_STRENGTHS, TaskSteering
from .generation import generate
from .eraser import Eraser, fit_eraser

__all__ = [
    "ArtifactError", "artifact_exists", "artifact_paths", "cache_key", "load_artifact", "read_sidecar", "save_artifact",
    "AdversarialImages", "PGDResult", "harmful_target_loss", "pgd_attack", "target_token_loss",
    "CONFIGS", "Example", "GAConfig", "GADiffConfig", "KLMinConfig", "MANUConfig", "MMUnlearnerConfig", "NPOConfig",
    "RetainFTConfig", "TrainConfig", "UnlearnResult", "answer_accuracy", "answer_nll", "build_examples",
    "pick_config", "retain_finetune", "sweep", "unlearn",
    "MLLMUBench", "load_split", "split_files", "write_rows", "write_world", "ClearBench",
    "BENCHMARK", "CATEGORIES", "ZERO_SHOT", "categorize", "category_table", "evaluate_model", "evaluate_safety",
    "is_degenerate", "is_refusal", "refusal_rates", "render_table", "results_table",
    "distinct_n", "fluency_nll", "hallucination", "is_contextual_refusal", "quality_table", "repetition_rate",
    "rigid_refusal_share", "RewardWeights", "boundary_reward", "quality_reward",
    "ErasureDirection", "cosine_per_layer", "diff_in_means", "layer_norms", "project_out",
    "capture", "check_layers", "collect_activations", "steer",
    "Adapter", "CausalLMAdapter", "LlavaAdapter", "ModelAdapter", "Qwen3VLAdapter", "Qwen25VLAdapter", "adapter_for",
    "load_model", "pick_device_dtype",
    "NullSpaceProjector", "null_space_projector",
    "InputAwareMap", "InputAwareSteerer", "MLPMap", "ablation_operator", "constant_operator", "constant_operators",
    "fit_input_aware", "fit_mlp", "fit_mlp_steerer", "fit_steerer",
    "GATES", "GatedOperator", "dense_gate_reference", "fit_contrastive_gate", "fit_gate",
    "ProfilePartition", "partition_profiles", "auc", "choose_gate", "heldout_gate_auc", "select_layers",
    "Session", "load_session", "PAPER_STRENGTHS", "TaskSteering", "generate", "Eraser", "fit_eraser",
]
