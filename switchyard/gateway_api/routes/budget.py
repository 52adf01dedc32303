"""`GET /v1/budget`: what the caller's key and its tenant have spent, hold and have left in each window."""

from __future__ import annotations

from fastapi import APIRouter

from switchyard.gateway_api.api_docs import errors
from switchyard.gateway_api.deps import StateDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.tenancy.quotas.schemas import BudgetView

router = APIRouter(tags=["budget"])


# A plain `def`: the counters (Redis) and, for a window Redis does not know, Postgres are read in a thread.
@router.get("/v1/budget", response_model=BudgetView, responses=errors(503))
def get_budget(principal: Viewer, state: StateDep) -> FastJSONResponse:
    """For the caller's key and its tenant, per UTC window (`daily`, `monthly`): the limit, what was spent,
    what calls in flight hold (their worst case), what is left and when the window resets."""
    return FastJSONResponse(state.quotas.budget_report(principal))
