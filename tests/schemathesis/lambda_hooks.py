"""Checks of our own for schemathesis runs against the lambda API (tests/api_schema.rs).

Loaded with SCHEMATHESIS_HOOKS=lambda_hooks (this directory on PYTHONPATH).
"""

import schemathesis


@schemathesis.check
def bad_request_names_a_parameter(ctx, response, case):
    """Every 400 names the parameter at fault: one the request sent, or one the operation declares
    (a required parameter that was left out)."""
    if response.status_code != 400:
        return None
    try:
        parameter = response.json()["error"]["parameter"]
    except Exception as e:  # not JSON, or not our error shape
        raise AssertionError(f"a 400 without error.parameter: {e}; body: {response.text[:300]!r}")
    sent = set((case.query or {}).keys())
    declared = {p.name for p in case.operation.query}
    if parameter not in sent | declared:
        raise AssertionError(
            f"the 400 names `{parameter}`, which the request did not send ({sorted(sent)}) "
            f"and the operation does not declare ({sorted(declared)})"
        )
    return None
