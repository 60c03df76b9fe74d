"""When a schedule's ticks fall: cron expressions in an IANA time zone, or fixed intervals.

Cron arithmetic is croniter's (maintained by Airflow's people, and what SAQ uses), in the
schedule's zone, so that `0 9 * * *` in Europe/Berlin is 09:00 there in winter and in summer.
Across daylight-saving changes we follow Vixie cron, as system crons do:
- spring forward: a time that does not exist that day runs when the clock jumps (croniter's
  answer);
- fall back: a time that happens twice runs once, at its first occurrence, unless the hour
  field is a wildcard (`*` or `*/n`: then each real hour is its own tick). croniter answers
  both occurrences; we skip the second.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

CRON_MAX_CHARS = 120
TIMEZONE_MAX_CHARS = 64
# A tick at most this often (the scheduler's own pace) and at least this seldom.
INTERVAL_MIN_SECONDS = 1
INTERVAL_MAX_SECONDS = 366 * 24 * 3600


def check_cron(expression: str) -> str:
    """A five-field cron expression, as croniter reads it. Raises ValueError."""
    if len(expression) > CRON_MAX_CHARS:
        raise ValueError(f"at most {CRON_MAX_CHARS} characters")
    fields = expression.split()
    # croniter also takes a sixth (seconds) and seventh (year) field: the contract is five.
    if len(fields) != 5:
        raise ValueError("must have five fields: minute hour day-of-month month day-of-week")
    if not croniter.is_valid(" ".join(fields)):
        raise ValueError(f"not a valid cron expression: {expression!r}")
    return " ".join(fields)


def check_timezone(name: str) -> ZoneInfo:
    """An IANA zone name. Raises ValueError."""
    if not name or len(name) > TIMEZONE_MAX_CHARS or not name.isascii():
        raise ValueError("must be an IANA time zone name, such as UTC or Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # (A folder's name, such as `Europe`, is an OSError.)
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name, such as Europe/Berlin)"
        ) from None


def _repeats_wall_time(moment: datetime, zone: ZoneInfo) -> bool:
    """Whether `moment` is the second occurrence of its wall-clock time (a fall-back hour)."""
    wall = moment.astimezone(zone).replace(tzinfo=None)
    first = wall.replace(tzinfo=zone, fold=0)
    return first.utcoffset() != moment.astimezone(zone).utcoffset() and (
        first.astimezone(UTC) < moment.astimezone(UTC)
    )


def _wildcard_hours(expression: str) -> bool:
    hours = expression.split()[1]
    return hours == "*" or hours.startswith("*/")


def cron_after(expression: str, zone: ZoneInfo, moment: datetime) -> datetime:
    """The first tick of `expression` in `zone` strictly after `moment`, in UTC."""
    times = croniter(expression, moment.astimezone(zone))
    while True:
        tick: datetime = times.get_next(datetime)
        if _wildcard_hours(expression) or not _repeats_wall_time(tick, zone):
            return tick.astimezone(UTC)


def cron_at_or_before(expression: str, zone: ZoneInfo, moment: datetime) -> datetime:
    """The latest tick of `expression` in `zone` at or before `moment`, in UTC."""
    # croniter's get_prev is strictly before its start: start a microsecond later.
    times = croniter(expression, (moment + timedelta(microseconds=1)).astimezone(zone))
    while True:
        tick: datetime = times.get_prev(datetime)
        if _wildcard_hours(expression) or not _repeats_wall_time(tick, zone):
            return tick.astimezone(UTC)


def first_tick(
    cron: str | None, interval_seconds: int | None, zone: ZoneInfo, moment: datetime
) -> datetime:
    """A new (or changed, or enabled again) schedule's first tick after `moment`."""
    if cron is not None:
        return cron_after(cron, zone, moment)
    assert interval_seconds is not None
    return moment + timedelta(seconds=interval_seconds)


def due_tick(
    cron: str | None,
    interval_seconds: int | None,
    zone: ZoneInfo,
    next_run_at: datetime,
    moment: datetime,
) -> tuple[datetime, datetime]:
    """For a schedule due at `next_run_at` <= `moment`: the tick to run now, the latest one
    due (ticks missed while no service ran are dropped, but for that one), and the tick after
    it. Interval ticks stay on the grid of the first one."""
    if cron is not None:
        return cron_at_or_before(cron, zone, moment), cron_after(cron, zone, moment)
    assert interval_seconds is not None
    step = timedelta(seconds=interval_seconds)
    missed = (moment - next_run_at) // step
    tick = next_run_at + missed * step
    return tick, tick + step
