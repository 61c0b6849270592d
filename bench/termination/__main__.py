import sys

from bench.termination.cli import main

sys.exit(main())
