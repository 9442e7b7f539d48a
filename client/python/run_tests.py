#!/usr/bin/env python3
"""Runs the Python client's tests; for CI.

    python3 client/python/run_tests.py [--require-daemon] [-q]

Exits non-zero when a test fails or errs, when no test ran, and, with
``--require-daemon``, when the daemon's binaries are missing (the tests
against the real daemon fail instead of being skipped). The binaries come
from ``$TOKEND_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else
``target/debug``.
"""

import argparse
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-daemon", action="store_true",
                        help="fail, not skip, the daemon tests when tokend is not built")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args()
    if args.require_daemon:
        os.environ["TOKEND_REQUIRE_DAEMON"] = "1"
    tests_dir = os.path.join(HERE, "tests")
    suite = unittest.defaultTestLoader.discover(tests_dir, top_level_dir=tests_dir)
    result = unittest.TextTestRunner(verbosity=1 if args.quiet else 2).run(suite)
    for test, reason in result.skipped:
        print(f"skipped: {test.id()}: {reason}")
    if result.testsRun == 0:
        print("no test ran", file=sys.stderr)
        return 1
    if not result.wasSuccessful():
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
