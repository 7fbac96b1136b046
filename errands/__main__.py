"""`python -m errands` is the `errands` command."""

from errands.cli import main

main()
