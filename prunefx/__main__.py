import sys

try:
    from prunefx.cli import entry_point
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, as everywhere else
    sys.stderr.write("prunefx: interrupted; no output was written\n")
    sys.exit(130)

sys.exit(entry_point())
