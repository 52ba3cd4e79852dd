"""`deft study`: DEFT's selection and loss term against random and full-data baselines, each
arm trained through `axolotl train` and measured on the same held-out pairs, with intervals
over seeds and paired bootstrap differences. The spec (spec.py) declares the data split, the
training recipe shared by every arm, and the arms."""
