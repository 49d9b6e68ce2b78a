"""Evaluation harness: QA dataset loading, answer metrics, bootstrap CIs and paired permutation tests, reports."""
from kvi_engine.eval.dataset import ALLOWED_FIELDS, DatasetFormatError, QAItem, load_dataset
from kvi_engine.eval.metrics import canonicalize, exact_match, relaxed_match, score, token_f1
from kvi_engine.eval.report import EvalReport, MethodResult, evaluate, to_csv, to_markdown, write_report
from kvi_engine.eval.stats import bootstrap_ci, paired_permutation_test

__all__ = ["ALLOWED_FIELDS", "DatasetFormatError", "EvalReport", "MethodResult", "QAItem", "bootstrap_ci",
           "canonicalize", "evaluate", "exact_match", "load_dataset", "paired_permutation_test", "relaxed_match",
           "score", "to_csv", "to_markdown", "token_f1", "write_report"]
