#!/usr/bin/env python3
"""Replaces one benchmark's section of BENCHMARKS.md with a new table.

usage: printf '%s\n' "$table" | write_section.py NAME SCRIPT

The section lies between `<!-- NAME:start -->` and `<!-- NAME:end -->`
(appended at the end of the file if it is not there yet). It gets a line
saying when, on what and at which commit SCRIPT measured, then the table.
Every bench/*.sh writes its figures through this, so they read alike.
"""
import os
import re
import subprocess
import sys
import time


def stamp():
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load = open("/proc/loadavg").read().split()[0]
    when = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    return (
        f"{when}, {os.cpu_count()} cores, {os.uname().machine}, "
        f"load average {load} at the end, commit {commit}"
    )


def main():
    name, script = sys.argv[1:3]
    table = sys.stdin.read().strip()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n\nMeasured {stamp()} with `{script}`:\n\n{table}\n{end}"
    path = "BENCHMARKS.md"
    text = open(path).read()
    if start in text:
        pattern = re.escape(start) + ".*?" + re.escape(end)
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(path, "w").write(text)


if __name__ == "__main__":
    main()
