"""The model registry side: registering an export (:mod:`.registration`), packaging it as an MLflow pyfunc
(:mod:`.packaging`, :mod:`.model_code`), the champion/challenger decision and rollback under a lease
(:mod:`.champion`), the retraining check, and serving (the pyfunc's inference code).

May import: everything below it (config, names, faults, data, judging, backbone, tasktypes, store, fitting).
"""
