"""`python -m emostream.workers.stages STAGE [--no-create-topics]`: one stage's worker process.

This is how the local stack starts workers; `emostream worker STAGE` (the CLI) runs the same code.
"""

import argparse
import sys

from emostream.workers.stages.runner import STAGE_BUILDERS, run_worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m emostream.workers.stages")
    parser.add_argument("stage", choices=sorted(STAGE_BUILDERS))
    parser.add_argument("--no-create-topics", action="store_true")
    args = parser.parse_args()
    return run_worker(args.stage, create_topics=not args.no_create_topics)


sys.exit(main())
