"""The former name of :mod:`cnn_aliasing.clean_accuracy`, kept so that ``from cnn_aliasing.evaluation import
clean_accuracy`` (the import the README documented) still works."""

from cnn_aliasing.clean_accuracy import AccuracyResult, clean_accuracy

__all__ = ["AccuracyResult", "clean_accuracy"]
