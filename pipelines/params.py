"""`python -m pipelines.params [check|reference] [--params FILE]`: validate params or print the reference."""

from __future__ import annotations

import argparse
import sys

from components.config import ParamsError, load_params, params_reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.params", description=__doc__)
    parser.add_argument("action", nargs="?", choices=["check", "reference"], default="check")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    if args.action == "reference":
        print(params_reference())
        return 0
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.params}: valid (hash {params.digest()}, tokenizer {params.tokenizer.preset}: "
          f"{params.tokenizer.arch.num_tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
