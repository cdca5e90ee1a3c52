"""A handler module that fails at import (handler ``bad_import.handler``).

Lambda reports it as ``Runtime.ImportModuleError``: "Unable to import module 'bad_import': ...".
"""

raise ImportError("bad_import fails on purpose: No module named 'ember_missing_dependency'")


def handler(event, context):  # never reached
    return {}
