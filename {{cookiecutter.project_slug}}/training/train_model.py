"""Training entry point: hpo.py's loop plus the SageMaker Debugger hook and a final test evaluation.

Prints `test:loss=<value> test:accuracy=<value>` for the saved (best) epoch at the end.
"""

from engine import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser(__doc__.splitlines()[0]).parse_args(), use_debugger=True, evaluate_test=True)
