"""Distillation of a trained classifier into a static-embedding student (`adaptext distill`)."""

from adaptext.distill.distiller import distill_model
from adaptext.distill.student import StudentSettings

__all__ = ["StudentSettings", "distill_model"]
