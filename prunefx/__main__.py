import sys

from prunefx.cli import main

sys.exit(main())
