"""`python -m loop.cli` is `matloop`."""

from loop.cli.main import main

main()
