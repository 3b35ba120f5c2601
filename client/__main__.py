"""`python -m client ...` is `clstream-client ...`."""
import sys

from .cli import main

sys.exit(main())
