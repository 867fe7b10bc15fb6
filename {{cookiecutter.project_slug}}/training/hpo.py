"""Hyperparameter tuning entry point: train, validate each epoch, print the tuner's objective, save.

SageMaker runs `python hpo.py --epochs 5 --batch_size 40 --lr 0.005 ...`; the
tuner reads `validation:loss=<value>` from the log (one line per epoch, the
saved epoch's value last).
"""

from engine import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser(__doc__.splitlines()[0]).parse_args())
