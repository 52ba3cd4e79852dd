"""Known-harmless notices of dependencies, kept off the terminal and in the run's log file, so
that the terminal shows the project's own lines. Each entry is a logger and the text of the one
notice that is dropped from it; anything else that logger says still reaches the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FILE = "deft.log"
HARMLESS = {
    # torchao's optional compiled kernels, absent from this build: torchao works without them
    "torchao": "Failed to load",
    # torchao registers enums the way torch now deprecates; nothing the user can change
    "torch.utils._pytree": "is an Enum subclass",
    # SmolLM2's saved tokenizer option, which transformers rightly ignores for BPE tokenizers
    "transformers.tokenization_utils_tokenizers": "Ignoring clean_up_tokenization_spaces",
    # bitsandbytes picking its nearest CUDA kernel library (CUDA builds of torch, also on CPU)
    "bitsandbytes.cextension": "No prebuilt binary",
}


class _FolderMakingFileHandler(logging.FileHandler):
    """A file handler that opens (and makes the folder of) its file at the first record."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _KeptInLogFile(logging.Filter):
    def __init__(self, text: str, handler: logging.Handler | None):
        super().__init__()
        self.text, self.handler = text, handler

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        if self.handler is not None:
            self.handler.handle(record)
        return False


def keep_dependency_noise_in(folder: str | Path | None) -> Path | None:
    """Route the HARMLESS notices to folder/deft.log (dropped when folder is None) instead of
    the terminal, from now on in this process. Returns the log file's path."""
    path = Path(folder) / LOG_FILE if folder is not None else None
    handler = None
    if path is not None:
        handler = _FolderMakingFileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name, text in HARMLESS.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _KeptInLogFile)]:
            logger.removeFilter(old)
        logger.addFilter(_KeptInLogFile(text, handler))
    return path
