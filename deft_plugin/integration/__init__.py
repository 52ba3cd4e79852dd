"""The Axolotl adapter: the plugin, its YAML keys, the load_datasets hook, the DEFT-DPO and
DEFT-PRO trainers, the listwise collator and callbacks. The only package that imports axolotl."""
