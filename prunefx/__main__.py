import sys

from prunefx.cli import entry_point

sys.exit(entry_point())
