"""The MLflow UI as ``tuneflow ui`` serves it: MLflow's own server app, opening in the model-training view.

MLflow 3.17/3.18 keep the UI's GenAI / Model-training toggle in the browser's localStorage (default GenAI)
and do not reconcile it with the opened experiment's kind (MLflow #24498; the fix was not released). A
``?workflowType=`` link selects a view for that page only: the first click into a run falls back to GenAI.
This app is MLflow's server app with one change to the page it serves: a script that, before the UI
starts, stores the view a link asked for (``workflowType=`` in the URL), or model training when the browser
has no choice yet; marks the Assistant panel as already shown once and the registry's promotional dialog as
dismissed (MLflow 3.17 opens the panel over a third of the runs table on a first visit, and has no server
setting for either: both are the same per-browser flags a click sets); and opens links between the UI's own
pages (a version's description linking its run) in the same tab instead of a new one. A user's own choices
are kept. Registered for ``mlflow server --app-name tuneflow``
through the ``mlflow.app`` entry point (MLflow's plugin mechanism for server apps).
"""

from __future__ import annotations

import json
from typing import Any

STORAGE_KEY = "mlflow.workflowType_v1"  # the UI's useLocalStorage key (name + version), JSON-encoded
DEFAULT_VIEW = "machine_learning"
VIEWS = ("machine_learning", "genai")

# The UI's useLocalStorage flags (name + version) that a first visit would otherwise find unset.
SHOWN_ONCE = (
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1",
    "_mlflow_model_registry_promo_modal_dismissed_v1",
)

SCRIPT = (
    "<script>(function(){try{var k=KEY,m=location.href.match(/[?&]workflowType=(VIEWS)/);"
    "if(m){localStorage.setItem(k,JSON.stringify(m[1]));}"
    "else if(localStorage.getItem(k)===null){localStorage.setItem(k,JSON.stringify(DEFAULT));}"
    "SHOWN.forEach(function(f){if(localStorage.getItem(f)===null){localStorage.setItem(f,'true');}});"
    "}catch(e){}"
    # A click on a new-tab link to one of the UI's own pages (#/...) navigates this tab; modified clicks
    # (Ctrl, Cmd, Shift, middle button) still open a new one.
    "document.addEventListener('click',function(e){"
    "var a=e.target.closest&&e.target.closest('a[target=_blank]');"
    "if(!a||e.button!==0||e.ctrlKey||e.metaKey||e.shiftKey||e.altKey){return;}"
    "var u=new URL(a.getAttribute('href')||'',location.href);"
    "if(u.origin===location.origin&&u.pathname===location.pathname&&u.hash.indexOf('#/')===0){"
    "e.preventDefault();e.stopPropagation();location.hash=u.hash;}},true);"
    "})();</script>"
)
for _name, _value in (
    ("KEY", json.dumps(STORAGE_KEY)),
    ("VIEWS", "|".join(VIEWS)),
    ("DEFAULT", json.dumps(DEFAULT_VIEW)),
    ("SHOWN", json.dumps(list(SHOWN_ONCE))),
):
    SCRIPT = SCRIPT.replace(_name, _value)


def inject(index_html: str) -> str:
    """The UI's page with the view script first in <head>, so it runs before the app's bundle."""
    return index_html.replace("<head>", "<head>" + SCRIPT, 1)


def create_app() -> Any:
    """MLflow's ASGI server app whose UI page carries :data:`SCRIPT` (an ``mlflow.app`` factory)."""
    from pathlib import Path

    from flask import Response
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    index = Path(flask_app.static_folder) / "index.html"
    page = inject(index.read_text(encoding="utf-8")) if index.exists() else None
    original = flask_app.view_functions["serve"]

    def serve() -> Any:
        if page is None:  # a source install without the built UI: MLflow's own explanation
            return original()
        return Response(page, mimetype="text/html")

    flask_app.view_functions["serve"] = serve
    return create_fastapi_app(flask_app)


def ui_args(tracking_uri: str) -> list[str]:
    """``mlflow`` arguments that serve the UI of a store with this app (``tuneflow ui``, the browser test);
    host and port come after them."""
    return ["ui", "--backend-store-uri", tracking_uri, "--app-name", "tuneflow"]
