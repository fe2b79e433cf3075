"""The one error of the job manager."""


class JobError(ValueError):
    """A request the job manager refuses; the message says why and what to do."""
