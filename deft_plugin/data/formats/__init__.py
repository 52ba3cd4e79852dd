"""Built-in dataset formats; each module registers through the `deft_plugin` entry points."""
