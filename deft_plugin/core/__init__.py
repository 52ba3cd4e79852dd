"""The DEFT method as tensor functions: the discrepancy distribution Q, the distribution reward,
target log-probabilities, the losses and the selection of the top pairs. Imports torch, never Axolotl."""
