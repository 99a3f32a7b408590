"""Auditing a labelled data set: likely label errors (confident learning) and duplicates, leakage included.

>>> from adaptext.audit import audit_files  # doctest: +SKIP
>>> audit_files("train.csv", "audit-out", test="test.csv").suspects[:3]  # doctest: +SKIP
"""

from adaptext.audit.audit import audit_files, audit_splits
from adaptext.audit.result import AuditResult, AuditSettings, Suspect

__all__ = ["AuditResult", "AuditSettings", "Suspect", "audit_files", "audit_splits"]
