"""The import path of models registered before the library was split into stage packages: their logged
``model_code`` says ``from tuneflow.serving import TuneflowModel``. In a process that has already imported
this tuneflow (``tuneflow predict``, a promotion) those models load today's classes from here, with their own
export format, which has not changed. New models import :mod:`tuneflow.registry.serving` directly.

May import: registry.
"""

from tuneflow.registry.serving import AdapterSetModel, GenerativeModel, TuneflowModel

__all__ = ["AdapterSetModel", "GenerativeModel", "TuneflowModel"]
