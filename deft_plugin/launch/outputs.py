"""The files a DEFT run writes into Axolotl's output_dir, named once for the writers here and
the readers outside (the demo, the study)."""

METRICS_LOG = "deft_metrics.jsonl"  # one JSON record per logging step (loss, deft/* metrics)
SELECTION_RECORD = "deft_selection.json"  # the rows this run kept and the filter's report
REJECTED_RECORD = "deft_rejected.jsonl"  # every row the filter left out before scoring: where, stage, reason
