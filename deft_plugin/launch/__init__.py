"""Running DEFT through `axolotl train` from outside Axolotl: the demo and the study write an
Axolotl config, run it in a subprocess and read what the run wrote (outputs.py names those
files for the plugin that writes them and the callers that read them)."""
