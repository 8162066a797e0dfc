"""`python -m ebmesh`: the same as the `ebmesh` command."""

import sys

from ebmesh.cli import main

sys.exit(main())
