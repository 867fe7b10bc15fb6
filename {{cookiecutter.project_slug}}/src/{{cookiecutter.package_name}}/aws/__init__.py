"""The AWS side: where the calls go, what this project created, and what SageMaker receives.

- context.py: `AwsContext`, the boto3 session, region, bucket, prefix and role (a leaf: no SDK, no moto);
- session.py: one session of work, a context plus the project's record (`open_session`, real or dry run);
- state.py: what the project created, in `.state/resources.json`;
- offline.py: the dry run's offline AWS (moto), remembered from one command to the next;
- sdk.py: which SDK generation sends the requests ([aws] sagemaker_sdk), the one place it is chosen;
- sagemaker_api.py (SDK v2) and sagemaker_api_v3.py (SDK v3): the only modules that import the SDK;
- sagemaker_jobs.py: what the jobs are (rules, channels, environment), decided without the SDK;
- ray_package.py: the endpoint's model package and image for AWS's Ray Serve container;
- tagging.py, pricing.py, image_support.py: the tags, the prices, and when AWS stops supporting an image.
"""
