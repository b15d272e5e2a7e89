"""Where effects go: the metrics, the call log, and the journal."""
