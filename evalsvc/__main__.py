"""`python -m evalsvc` runs the CLI (the same as the `evalsvc` script)."""

from evalsvc.cli import main

main()
