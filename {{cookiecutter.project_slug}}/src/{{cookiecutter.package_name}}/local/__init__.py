"""The stand-ins on this machine: a training job and an endpoint, run with SageMaker's own toolkits.

- training_run.py: `train --local`, the training entry point under the sagemaker-training toolkit;
- endpoint.py and http_server.py: `serve`, the serving container's HTTP contract (waitress);
- ray_endpoint.py: `serve --server ray_serve`, the Ray Serve package run as its container runs it.
"""
