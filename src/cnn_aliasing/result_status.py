"""The status of a model in a study's result files (docs/results-format.md), shared by the study that
writes them and the report that reads them (which must not import the study's model-running code)."""

DONE = "done"
FAILED = "failed"
PENDING = "pending"
