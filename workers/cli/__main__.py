"""`python -m emostream.workers.cli ...` is the `emostream` console command."""

import sys

from emostream.workers.cli import main

sys.exit(main())
