"""`python -m codelm ...` (and `torchrun -m codelm ...`) runs the command line."""

from codelm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
