"""aln-node edge: DICOM SCP, durable spool, job ledger, routing, dispatch and CLI.

This package must import and run without torch or monai installed (see shared/DESIGN.md).
"""

__version__ = "0.1.0"
