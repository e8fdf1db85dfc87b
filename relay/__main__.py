"""`python -m relay` runs the command-line interface."""

from relay.cli import main

main(prog_name="outbox-relay")
