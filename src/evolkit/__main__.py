"""`python -m evolkit` runs the command line."""

from evolkit.cli import main

main()
