"""How many runs a visitor, and all visitors together, may have queued or running at once on a shared app."""
from __future__ import annotations

from vit.jobs.errors import JobError
from vit.safety import valid_owner_token


class Quota:
    """At most `limit` runs queued or running per visitor (None: no limit, as on a single-user app), and `total`
    of all visitors together (None: no limit). Submissions under way (reserved, not yet queued) count too, so
    concurrent starts and resumes cannot pass the limits together. It only counts: the caller holds its own lock
    around every call and gives the runs queued or running (`active`: the visitor's, `everyone`: all)."""

    def __init__(self, limit: int | None, total: int | None = None):
        self.limit, self.total = limit, total
        self._reservations: dict[str | None, int] = {}  # owner -> submissions under way

    def check(self, owner: str | None, active: int, everyone: int, reserving: bool = False) -> None:
        """JobError when one more run of `owner`'s would pass a limit; `reserving`: one of the reservations is
        this very request's."""
        if self.limit is None:
            return
        if not valid_owner_token(owner):
            raise JobError("This browser has no valid session id; reload the page (a run needs a session to "
                           "belong to).")
        if self.total is not None:
            everyone += sum(self._reservations.values()) - (1 if reserving else 0)
            if everyone >= self.total:
                raise JobError(f"This shared app is busy: {everyone} runs of its visitors are queued or running, its "
                               f"limit (VIT_MAX_ACTIVE_RUNS={self.total}). Try again when one has finished, or run the "
                               "app on your own machine (README: make run).")
        active += self._reservations.get(owner, 0) - (1 if reserving else 0)
        if active >= self.limit:
            raise JobError(f"You already have {active} runs queued or running (the limit on this shared app is "
                           f"{self.limit}); wait for one to finish or cancel one.")

    def reserve(self, owner: str | None, active: int, everyone: int) -> None:
        """Hold one of the owner's places while a submission copies its data (JobError when there is none)."""
        self._reservations[owner] = self._reservations.get(owner, 0) + 1
        try:
            self.check(owner, active, everyone, reserving=True)
        except BaseException:
            self.release(owner)
            raise

    def release(self, owner: str | None) -> None:
        self._reservations[owner] -= 1
        if not self._reservations[owner]:
            del self._reservations[owner]
