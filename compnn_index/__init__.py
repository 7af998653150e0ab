"""compnn-index: Compositional Nearest Neighbors as an index service on FAISS.

Explains a pixel-level CNN by copy-pasting training patches matched in one layer's embedding.
"""
__version__ = "0.1.0"
