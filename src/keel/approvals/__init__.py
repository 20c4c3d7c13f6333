"""Human-in-the-loop approvals as durable DBOS workflows.

Importing this package is cheap and side-effect free (settings load it): DBOS is only
imported and configured when an :class:`~keel.approvals.engine.ApprovalEngine` starts.
Python API::

    handle = await engine.request(Proposal(action="refund", amount=1200, risk_level="HIGH"))
    result = await handle.wait(timeout_s=30)
"""
