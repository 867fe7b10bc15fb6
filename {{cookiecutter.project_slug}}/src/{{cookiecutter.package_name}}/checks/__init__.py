"""Is it sound? The checks before a launch, of a project, and of a hand-in, each a table of verdicts.

- preflight.py: does the account let this configuration run (before anything costs money);
- iam.py: the least-privilege policies, derived from the calls the code really makes;
- project_check.py: `check`, what a grader or CI runs (scripts, notebook, config, dry runs, local runs);
- handin.py and writeup.py: is the hand-in complete, and the write-up draft it needs;
- findings.py: one row of a pass/warn/fail table.
"""
