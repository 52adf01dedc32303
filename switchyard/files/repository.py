"""Queries on files."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from switchyard.core.models import File


def get_live(session: Session, tenant_id: str, file_id: str) -> File | None:
    """A file of the tenant that has not been deleted (None: unknown, deleted, or another tenant's)."""
    return session.scalar(
        select(File).where(File.id == file_id, File.tenant_id == tenant_id, File.deleted_at.is_(None))
    )


def page(
    session: Session,
    tenant_id: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> list[File]:
    """The tenant's live files in id order (ids sort by creation time), after the cursor. Fetches one extra row,
    which tells whether there are more."""
    query = select(File).where(File.tenant_id == tenant_id, File.deleted_at.is_(None))
    if purpose:
        query = query.where(File.purpose == purpose)
    if order == "desc":
        if after:
            query = query.where(File.id < after)
        query = query.order_by(File.id.desc())
    else:
        if after:
            query = query.where(File.id > after)
        query = query.order_by(File.id.asc())
    return list(session.scalars(query.limit(limit + 1)))
