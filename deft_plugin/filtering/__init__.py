"""The DEFT filter with a model and without Axolotl: encode -> Q -> score every reply -> select,
with a resumable score cache; and the held-out preference accuracy the demo and the study share."""
