"""The status of a model in a study's result files (docs/results-format.md), shared by the study that
writes them and the report that reads them (which must not import the study's model-running code)."""

from typing import Literal, get_args

ResultStatus = Literal["done", "failed", "pending"]
RESULT_STATUSES: tuple[ResultStatus, ...] = get_args(ResultStatus)
DONE: ResultStatus = "done"
FAILED: ResultStatus = "failed"
PENDING: ResultStatus = "pending"
