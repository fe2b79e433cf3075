"""What the tabs' events share: the Page (the job manager, the limits, the visitor's token, their dataset, the
clock), handlers bound to it with their inputs checked by type, named inputs and outputs (the form's signature, the
NamedTuple contracts), refusals as toasts, one request per visitor in a lane."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import secrets
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from vit import jobs
from vit.safety import HostLimits
from vit.train.config import DEFAULTS, SETTINGS
from vit.ui.common import FORM


class OnePerVisitor:
    """At most one request of a kind per visitor at a time (their token, or their page's session on events that
    have no token): a second one is refused at once rather than queued behind the first, so no visitor holds a lane
    twice."""

    def __init__(self):
        self.busy, self.lock = set(), threading.Lock()

    @contextlib.contextmanager
    def holding(self, who: str | None, message: str):
        if not who:
            yield
            return
        with self.lock:
            if who in self.busy:
                raise refused(message)
            self.busy.add(who)
        try:
            yield
        finally:
            with self.lock:
                self.busy.discard(who)


ONE_BATCH_EACH = OnePerVisitor()   # batches of images to classify


ONE_CHECK_EACH = OnePerVisitor()   # dataset checks (an upload, the sample, classes built here)


def refused(message: str, **options) -> gr.Error:
    """A request the app turns down for the visitor's own reasons: a toast with the message, one line in the
    log, no traceback (tracebacks are for bugs)."""
    print(f"vit.ui: refused: {message.splitlines()[0][:300] if message else ''}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False, **options)


def outputs(contract: type, **components) -> list:
    """The components that an event returning `contract` (a NamedTuple of updates) fills, in its fields' order:
    a handler names each update, and no order can slip."""
    if set(components) != set(contract._fields):
        raise ValueError(f"{contract.__name__} fills {contract._fields}, not {tuple(components)}")
    return [components[f] for f in contract._fields]


PRIVATE = dict(api_visibility="private", show_progress="hidden")  # an event of the page's own, not of the API


@dataclass
class Page:
    """What the tabs' events share: the job manager (made on first use), the host's limits, the visitor's
    token (kept by the browser), their checked dataset, and the clock the run views poll on."""

    app: gr.Blocks
    manager: Callable[[], jobs.JobManager]
    limits: HostLimits
    owner: gr.BrowserState
    dataset: gr.State
    timer: gr.Timer

    def bind(self, fn: Callable, *first) -> Callable:
        """`fn(manager, *first, ...)` as an event handler of the rest. Its names and defaults stay: the API page
        shows them, and a client may leave out those with a default."""
        get = self.manager
        check = typed_inputs(fn, skip=1 + len(first))

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            check(args, kwargs)
            return fn(get(), *first, *args, **kwargs)

        handler.__name__ = f"_{fn.__name__}"  # Gradio names an event by its function: the public names stay free
        signature = inspect.signature(fn)
        handler.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1 + len(first):])
        return handler


def visitor_token(typed: str | None, oauth_token) -> str | None:
    """The Hugging Face token of a request: the one typed in, else the signed-in visitor's (a Space's OAuth). Used for
    the request, never kept."""
    return (typed or "").strip() or (getattr(oauth_token, "token", None) if oauth_token else None)


def typed_inputs(fn: Callable, skip: int = 0) -> Callable[[tuple, dict], None]:
    """A check of the values an event hands `fn` (after its first `skip` parameters) against its annotations: text
    where it says str, a finite number where it says float or int, a bool where it says bool (None where allowed).
    A client of the API can send anything (an owner of 123, a model of ["a"], NaN); this refuses it in words
    before any of it is used."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())[skip:]

    def check(args: tuple, kwargs: dict) -> None:
        values = [*zip(params, args), *((signature.parameters[k], v) for k, v in kwargs.items()
                                        if k in signature.parameters)]
        for param, value in values:
            wants = {w.strip() for w in str(param.annotation).split("|")}
            if value is None or param.kind is param.VAR_POSITIONAL:
                continue
            title = param.name.replace("_", " ")
            if "str" in wants and isinstance(value, str):
                continue
            if wants & {"float", "int"} and not isinstance(value, bool) and isinstance(value, (int, float)):
                if not math.isfinite(value):
                    raise refused(f"The {title} must be a number (got {str(value)[:20]}).")
                continue
            if "bool" in wants and isinstance(value, bool):
                continue
            expected = ["text" if "str" in wants else "", "a number" if wants & {"float", "int"} else "",
                        "true or false" if "bool" in wants else ""]
            expected = " or ".join(e for e in expected if e)
            if expected:
                got = type(value).__name__ if "str" in wants else str(value)[:20]
                raise refused(f"The {title} must be {expected} (got {got}).")

    return check


def named_signature(fn: Callable, annotations: dict[str, str]) -> inspect.Signature:
    """`fn`'s signature with its **kwargs replaced by a keyword-only parameter (default None) for each name of
    `annotations`, typed by it: the names an event passes them by (`inputs_kwargs`), the API shows and
    typed_inputs checks."""
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
               for name, annotation in annotations.items()]
    return signature.replace(parameters=params)


def form_signature(fn: Callable) -> inspect.Signature:
    """named_signature for a handler of the Train form: a parameter for each of FORM's fields, typed from its
    Setting."""
    kinds = {}
    for name in FORM:
        s, default = SETTINGS.get(name), DEFAULTS.get(name)
        if name == "scratch" or isinstance(default, bool) and not s.auto:
            kind = "bool"
        elif s.kind:  # a number; an "auto" one is text in the form (empty: auto), a number or text from a client
            kind = "float | str" if s.auto else "float"
        else:  # the model, a choice, auto/on/off
            kind = "str"
        kinds[name] = f"{kind} | None"
    return named_signature(fn, kinds)


def _manager_getter(manager: jobs.JobManager | None):
    made: list[jobs.JobManager] = [manager] if manager else []

    def get() -> jobs.JobManager:
        if not made:
            made.append(jobs.JobManager())
        return made[0]

    return get


def _ensure_owner(owner: str | None) -> str:
    return owner or secrets.token_urlsafe(16)


def _whole_number(value, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value != int(value):
        raise ValueError(f"{name} must be a whole number (got {str(value)[:20]}).")
    if abs(value) > 10_000:
        raise ValueError(f"{name} {value:g} does not exist.")
    return int(value)
