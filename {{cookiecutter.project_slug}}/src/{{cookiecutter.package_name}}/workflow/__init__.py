"""The workflow as plain functions, what the CLI commands and the notebook call, each given an open session.

- launcher.py: upload, tune, train, deploy, predict (and what each records in the project's state);
- resources.py: the project's resources on AWS: status, cost so far, teardown;
- dataset.py, dataset_source.py, synthetic.py: the dataset laid out and checked, where it comes from
  (folder, zip, download), and a generated one for tests and dry runs;
- payload.py: what `predict` sends; costs.py: what a launch may cost, and the budget.
"""
