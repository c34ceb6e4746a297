"""`python -m haqa` runs the command line."""

from haqa.cli import main

main()
