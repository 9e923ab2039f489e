"""`python -m training.fer`: what `tadbot train` runs, in its own process."""

import sys

from training.fer.cli import main

sys.exit(main())
