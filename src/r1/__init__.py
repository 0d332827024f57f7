"""r1: the DeepSeek-R1 recipe as runnable software."""
__version__ = "0.1.0"
