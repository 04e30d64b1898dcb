"""`python -m replab_fast`: the `replab-fast` command."""

import sys

from .cli import main

sys.exit(main())
