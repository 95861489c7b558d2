"""`python -m nmt` (and `torchrun -m nmt`) run the command line."""

import sys

from nmt.cli import main

sys.exit(main())
