"""deft_app: blind side-by-side human judging of two models' answers (installed from the
`app/` directory as `deft_app`)."""

__version__ = "0.1.0"
