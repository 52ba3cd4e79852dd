"""Built-in scorers; each module registers through the `deft_eval` entry points."""
