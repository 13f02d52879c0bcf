"""`python -m emoreact ...`: the same CLI as the `emoreact` command."""
from emoreact.cli import main

main(prog_name="emoreact")
