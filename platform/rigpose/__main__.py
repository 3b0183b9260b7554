"""`python -m rigpose ...` runs the command line (the form used with `ray job submit`)."""

from rigpose.cli.main import main

main()
