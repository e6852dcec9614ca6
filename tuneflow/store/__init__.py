"""Where runs are kept: every MLflow call for runs, metrics, artifacts (:mod:`.tracking`) and the
registry (:mod:`.registered`), run params (:mod:`.params`), the saved runs view and links (:mod:`.ui`,
:mod:`.mlflow_app`), leases for promotion (:mod:`.locks`) and cleaning up local files (:mod:`.gc`).

May import: config, names, tasktypes.
"""
