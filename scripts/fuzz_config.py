#!/usr/bin/env python3
"""Fuzz mamoru's config loader with hypothesis: N examples (default 10,000), zero tracebacks.

    python scripts/fuzz_config.py [--examples 10000] [--seed N]

Each example is a config-shaped YAML document, a mutated one, or arbitrary text
(tests/reliability/fuzzing.py). The loader must return valid Settings or raise ConfigError
whose problems all carry the file name (and line); any other exception is counted as a
traceback and printed with its input. Exit status 0 when there were none.
The suite runs the same property with fewer examples (tests/reliability/test_config_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for entry in (str(ROOT), str(ROOT / "src")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from tests.reliability.fuzzing import check_config_text, inputs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    counts: collections.Counter[str] = collections.Counter()
    tracebacks: list[tuple[str, str]] = []

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def run(text: str) -> None:
        counts["examples"] += 1
        try:
            result = check_config_text(text)
        except Exception:
            tracebacks.append((text, traceback.format_exc()))
            return
        counts["valid" if result is not None else "ConfigError"] += 1

    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    for text, trace in tracebacks[:10]:
        print(f"--- input {text!r}\n{trace}")
    print(f"fuzz_config: {counts['examples']} examples ({counts['ConfigError']} ConfigError, "
          f"{counts['valid']} valid), {len(tracebacks)} tracebacks, {seconds:.0f} s, "
          f"seed {args.seed}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
