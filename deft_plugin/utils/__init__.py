"""What deft_plugin, deft_eval and deft_app share: atomic writes, JSONL reading, plots."""
