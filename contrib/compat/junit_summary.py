#!/usr/bin/env python3
"""Counts a JUnit XML report and lists its failing tests.

    junit_summary.py REPORT.xml OUTDIR

Prints "passed failed skipped" on one line and writes, in OUTDIR, one test
name per line to failed.txt (failures and errors), skipped.txt and
passed.txt, each sorted, so that two targets' lists can be compared with
comm(1). Expected failures (pytest's xfail) count as skipped. A report that
is missing or cannot be read prints "0 0 0" and writes empty lists, so that
a suite that never started shows up as such in the table rather than
stopping the run.
"""

import os
import sys
import xml.etree.ElementTree as ET


def name_of(case):
    cls = case.get("classname") or ""
    name = case.get("name") or ""
    # pytest writes "tests.test_copy" as the class of a module-level test,
    # mocha writes the suite title; either way class + name is unique.
    return f"{cls}::{name}" if cls else name


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    report, outdir = sys.argv[1], sys.argv[2]
    passed, failed, skipped = [], [], []
    try:
        root = ET.parse(report).getroot()
        cases = list(root.iter("testcase"))
    except (OSError, ET.ParseError) as ex:
        print(f"junit_summary: {report}: {ex}", file=sys.stderr)
        cases = []
    for case in cases:
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed.append(name_of(case))
        elif "skipped" in tags:
            skipped.append(name_of(case))
        else:
            passed.append(name_of(case))
    # A test whose teardown fails after its body passed is reported twice;
    # it counts once, as failed.
    failed = set(failed)
    skipped = set(skipped) - failed
    passed = set(passed) - failed - skipped
    os.makedirs(outdir, exist_ok=True)
    for fname, names in (
        ("failed.txt", failed),
        ("skipped.txt", skipped),
        ("passed.txt", passed),
    ):
        with open(os.path.join(outdir, fname), "w", encoding="utf-8") as f:
            for n in sorted(names):
                f.write(n + "\n")
    print(len(passed), len(failed), len(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
