"""The shared command line of every benchmark module: ``--repeat``, ``--json OUT``, print the table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(doc: str | None, run: Callable[[int], dict[str, Any]], markdown: Callable[[dict[str, Any]], str],
         repeat: int) -> None:
    """Parse ``--repeat`` / ``--json``, run the benchmark, write its JSON, print its markdown table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    outcome = run(args.repeat)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2, default=str))
    print(markdown(outcome))
