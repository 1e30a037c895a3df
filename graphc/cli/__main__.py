"""`python -m graphc.cli ...`: the `graphc` command without its console script."""

import sys

from graphc.cli.main import main

sys.exit(main())
