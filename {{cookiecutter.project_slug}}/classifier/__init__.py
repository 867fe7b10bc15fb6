"""What training and serving share: the network, the image presets and the model artifact.

This package is copied into both SageMaker source directories (training/ and
inference/) when they are staged, so it may import only what both containers
have: torch, torchvision, PIL and the standard library.
"""
