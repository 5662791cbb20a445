"""MNIST facts shared by every stage (one place for each)."""

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
# Normalisation applied at load time (never baked into the stored data).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# train / val (epoch selection, recipe decisions) / gate (promotion decisions) / test (report)
SPLITS = ("train", "val", "gate", "test")
