"""A privacy-preserving data sandbox: data is usable but invisible (可用不可见).

Operators ingest sensitive tables encrypted at rest; developers query them only
through a policy gate that releases differentially private aggregates.
"""

__version__ = "0.1.0"
