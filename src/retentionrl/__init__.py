"""retentionrl: optimize long-term user retention in recommender systems.

Pipeline (one sub-package per stage): data -> simulator -> agents -> evaluation -> report / serve.
"""

from retentionrl.errors import DataError, RetentionRLError

__version__ = "0.1.0"
__all__ = ["DataError", "RetentionRLError", "__version__"]
