"""`GET /v1/usage?group_by=model|provider|day&from=&to=`: the caller's tenant's tokens, requests, errors, cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from switchyard.core.errors import InvalidRequest
from switchyard.core.models import utcnow
from switchyard.gateway_api.deps import TxDep, Viewer
from switchyard.gateway_api.responses import FastJSONResponse
from switchyard.tasks.schemas import UsageReport
from switchyard.tasks.usage import GroupBy, usage

router = APIRouter(prefix="/v1/usage", tags=["usage"])

DEFAULT_SPAN = timedelta(days=30)


def _moment(value: str | None, param: str) -> datetime | None:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{param} must be an ISO date or date-time", param=param) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@router.get("", response_model=UsageReport)
def get_usage(
    principal: Viewer,
    tx: TxDep,
    group_by: GroupBy = "model",
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to: Annotated[str | None, Query(max_length=40)] = None,
) -> FastJSONResponse:
    """Tokens, provider calls, errors and cost of the caller's tenant, grouped; the last 30 days by default."""
    until = _moment(to, "to") or utcnow()
    since = _moment(from_, "from") or until - DEFAULT_SPAN
    if since >= until:
        raise InvalidRequest("from must be before to", param="from")
    return FastJSONResponse(usage(tx, principal.tenant_id, group_by=group_by, since=since, until=until))
