"""Hyperparameter tuning entry point: train, validate each epoch, print the tuner's objective, save.

What runs where. Each training job of SageMaker's hyperparameter tuning job runs
`python hpo.py --epochs 5 --batch_size 40 --lr 0.005 ...` in the PyTorch training image, from training/
(the estimator's source_dir); the tuner reads `validation:loss=<value>` from the log (one line per
epoch, the saved epoch's value last) and keeps the best job's hyperparameters for train_model.py.

The loop is train_model.py's, imported, not copied: the same `net()`, `train()` (and `test()` for the
validation pass each epoch), checkpoints and resume, run without the debugger hook, without the in-job
rules and profiler, without the final test pass and without the int8 copy (a tuning job's model is
ranked, not served). So smdebug plays no part here: an image without it runs this file unchanged.
With tracking configured, each job's MLflow run goes under one parent run per tuning job (tracking.py).
"""

from train_model import get_args_parser, main

if __name__ == "__main__":
    arguments = get_args_parser(__doc__.splitlines()[0]).parse_args()
    main(arguments, use_debugger=False, evaluate_test=False, tuning=True)
