"""embopt: make a sentence-embedding model fast to run, and prove what it kept.

Kept import-light on purpose: the registered MLflow model ships this package and
loads it with only onnxruntime, tokenizers and numpy installed.
"""

__version__ = "0.1.0"
