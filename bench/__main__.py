"""``python -m bench``: the ``bench`` command without installing the package (a lent GPU box, say)."""
import sys

from bench.cli import main

sys.exit(main())
