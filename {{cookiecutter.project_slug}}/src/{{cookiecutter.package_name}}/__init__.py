"""Finetune a torchvision image classifier on AWS SageMaker: data, tuning, training, deployment."""

__version__ = "0.1.0"
