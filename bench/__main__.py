"""`python -m bench`: run the benchmark (bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
