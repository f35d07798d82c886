"""The report endpoint's body and handler (serving/service.py routes `/report`): the same figures as
`nextbest report`, as JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = ["ReportRequest", "report_json"]


class ReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: Literal["day", "week", "month"] = Field("week", description="the report covers this period (month = 30 "
                                                   "days) ending at `as_of`; roll-ups by day, week and month inside it")
    as_of: AwareDatetime | None = Field(None, description="end of the period (default: the last send in the logs)")

    @field_validator("as_of")
    @classmethod
    def _plausible(cls, v: datetime | None) -> datetime | None:
        if v is not None and not datetime(1970, 1, 2, tzinfo=UTC) <= v <= datetime(2200, 1, 1, tzinfo=UTC):
            raise ValueError("as_of must lie between 1970 and 2200 (ISO-8601 with a time zone, e.g. 2026-11-30T00:00Z)")
        return v


def report_json(settings, req: ReportRequest) -> dict:
    """Funnels, incremental results against hold-outs, cost and ROI, send times and roll-ups, from the logs."""
    import pandas as pd

    from nextbest.monitoring.reports import build_report
    from nextbest.monitoring.sources import default_as_of, load_frame

    frame = load_frame(settings)
    as_of = pd.Timestamp(req.as_of).tz_convert("UTC") if req.as_of else default_as_of(frame)
    return build_report(frame, req.period, as_of).as_json()
