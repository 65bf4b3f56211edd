"""What the benchmark scripts share: a command line whose help is the script's docstring, and rows printed as
they come (progress on a long run) and then all together as JSON on the last line (for tools and tests)."""

from __future__ import annotations

import argparse
from typing import Any


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is `doc` (the script's docstring), kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_row(rows: list[dict[str, Any]], row: dict[str, Any], line: str) -> None:
    """Keep `row` for the closing JSON and print it now as `line` (a str.format template over its keys)."""
    rows.append(row)
    print(line.format(**row), flush=True)
