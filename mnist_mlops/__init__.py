"""mnist-mlops: raw MNIST to a monitored, self-retraining service."""
