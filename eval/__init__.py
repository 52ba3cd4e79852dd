"""deft_eval: evaluation of DEFT-trained models (installed from the `eval/` directory as
`deft_eval`). HH-RLHF generation with PRO's conventions; scorers and MT-Bench build on it."""

__version__ = "0.1.0"
