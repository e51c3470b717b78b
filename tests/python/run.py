#!/usr/bin/python3
"""Run the Python binding's tests (tests/python/test_*.py) with unittest.

    tests/python/run.py [-v] [PATTERN]    PATTERN: test file glob (test_*.py)

Finds the package in client/python and the build through $KVTC_BUILD (make
test sets it; default build/). Tests that need torch/transformers skip with
a message when the interpreter lacks them: run with the repository's .venv
(bench/quality/hf/setup.sh) to include them, e.g.
    KVTC_TEST_PYTHON=.venv/bin/python make BUILD=... test
Prints the skip reasons and one summary line; exits 1 on any failure or
error, 0 otherwise.
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def main(argv):
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"]
    pattern = args[0] if args else "test_*.py"
    sys.path[:0] = [os.path.join(REPO, "client", "python"), HERE]
    suite = unittest.defaultTestLoader.discover(HERE, pattern=pattern, top_level_dir=HERE)
    result = unittest.TextTestRunner(verbosity=2 if verbose else 1, stream=sys.stderr).run(suite)
    reasons = sorted({reason for _, reason in result.skipped})
    for reason in reasons:
        print("python tests: skipped: %s" % reason, file=sys.stderr)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - bad - len(result.skipped) - len(result.expectedFailures)
    print("python tests (%s): Tested: %d | Passing: %d | Failing: %d | Errors: %d | Skipped: %d"
          % (os.path.basename(sys.executable), result.testsRun, passed, len(result.failures),
             len(result.errors), len(result.skipped)))
    return 1 if bad or result.testsRun == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
