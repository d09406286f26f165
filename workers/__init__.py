"""aln-node compute plane: decoding, preprocessing, models, bundles, inference, results, research tools."""

__version__ = "0.1.0"
