"""`python -m <package>`: the same CLI as the console script."""

from .cli import main

if __name__ == "__main__":
    main(prog_name=__package__)
