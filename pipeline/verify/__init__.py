"""Answer verification: is a completion's final answer equal to the gold answer? The judge of filter and evaluate.

    verify_answer(gold, completion) -> VerifyResult(correct, predicted, reason)
    verify_many(golds, completions)  -> [VerifyResult, ...] in input order

- answers.py: what the answer is (math-verify's own extraction, configured as lighteval does, plus the few
  measured pre-normalisations), for golds and completions;
- check.py: the comparison (math-verify's `verify`) under a SIGALRM deadline, `verify_inline`, `warm_up`;
- pool.py: worker processes with a hard per-item wall-clock limit, whose scheduler cannot hang.
Reasons: "correct", "no answer found", "not equal", "timeout", "parse error" (an answer or gold that is not
mathematics math-verify can read, or one that kept killing its worker). Nothing evaluates model text.
"""

from importlib import metadata as _metadata

from .answers import extract_answer, parse_gold, parse_prediction
from .check import (DEFAULT_TIMEOUT_S, REASONS, REASON_CORRECT, REASON_NOT_EQUAL, REASON_NO_ANSWER, REASON_PARSE_ERROR,
                    REASON_TIMEOUT, VerifyResult, verify_inline, warm_up)
from .pool import VerifyPool, default_pool, shutdown_default_pool, start_default_pool, verify_answer, verify_many

def _verifier_id() -> str:
    try:
        version = _metadata.version("math-verify")
    except _metadata.PackageNotFoundError:
        version = "?"
    return f"verify-2 (math-verify {version} extraction)"


# What decides a verdict, for the fingerprints of outputs made from verdicts (filter, evaluate): bump the
# number when the project's rules change; a new math-verify version counts too.
VERIFIER_ID = _verifier_id()

__all__ = [
    "VERIFIER_ID",
    "VerifyResult", "VerifyPool", "verify_answer", "verify_many", "verify_inline", "extract_answer", "parse_gold",
    "parse_prediction", "REASONS", "REASON_CORRECT", "REASON_NO_ANSWER", "REASON_NOT_EQUAL", "REASON_TIMEOUT",
    "REASON_PARSE_ERROR", "DEFAULT_TIMEOUT_S", "default_pool", "start_default_pool", "shutdown_default_pool",
    "warm_up",
]
