"""The admin web UI: server-rendered pages (Starlette + Jinja2), no JavaScript build step.

Every database and ZooKeeper call blocks, so handlers run them in Starlette's
thread pool; the store serialises them on its one connection, which is plenty
for the few operators an admin UI has.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from taskman import __version__
from taskman.cluster.endpoints import PATHS as PROBE_PATHS
from taskman.cluster.endpoints import Probes
from taskman.errors import (
    StoreError,
    TaskmanError,
    TaskNotFoundError,
    TaskStateError,
    ValidationError,
)
from taskman.models import Task
from taskman.schedules import ScheduleNotFoundError
from taskman.states import Outcome, TaskState
from taskman.store import TaskStore, make_database
from taskman.store.dashboard import DashboardStore, TaskFilter
from taskman.store.schedules import ScheduleStore
from taskman.web import security
from taskman.web.cluster import ClusterSnapshot, ClusterView
from taskman.web.render import environment, throughput_bars

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
MAX_FORM_BYTES = 16 * 1024
COUNTS_TTL = 3.0  # COUNT(*) by state reads a whole index: share it between quick refreshes
T = TypeVar("T")

# Results of actions, by code: a redirect carries the code, never free text.
NOTICES = {
    "aborted": "Task {id} was aborted before it started.",
    "abort-requested": "Abort requested: the node running task {id} stops it within about a second.",
    "retried": "Task {id} is queued again; its next attempt gets a new fencing token.",
    "paused": "Schedule {name} is paused: no new ticks fire until it is resumed.",
    "resumed": "Schedule {name} is running again from its next tick.",
}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class UISettings:
    dsn: str
    zookeeper: str | None = None
    cluster: str = "default"
    auth: security.AuthConfig = field(default_factory=security.AuthConfig)
    zookeeper_security: Any = None  # taskman.cluster.zk.ZkSecurity (digest identity, TLS)
    poll_interval: float = 1.0  # seconds between refreshes of a task page's live part
    # Embedded mode: live members and the leader from the in-process coordinator
    # instead of ZooKeeper.
    members: Callable[[], tuple[list[dict[str, Any]], str | None]] | None = None
    # Embedded mode: the in-process node's /metrics, /healthz and /readyz, served
    # without the UI's login like a cluster node's own endpoints.
    probes: Probes | None = None


def _parse_time(value: str, name: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name}: {value!r} is not a time like 2026-05-01T12:00") from None
    # datetime-local inputs send no zone; the page labels them UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


WITHIN = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


def _filter_from(params: dict[str, str]) -> TaskFilter:
    state = params.get("state", "").strip()
    if state and state not in {s.value for s in TaskState}:
        raise ValidationError(f"unknown state {state!r}")
    since = _parse_time(params.get("since", ""), "since")
    within = params.get("within", "")
    if within:
        if within not in WITHIN:
            raise ValidationError(f"unknown time range {within!r}")
        since = datetime.now(UTC) - timedelta(seconds=WITHIN[within])
    return TaskFilter(
        state=TaskState(state) if state else None,
        plugin=params.get("plugin", "").strip() or None,
        function=params.get("function", "").strip() or None,
        datacenter=params.get("datacenter", "").strip() or None,
        since=since,
        until=_parse_time(params.get("until", ""), "until"),
        search=params.get("q", "").strip() or None,
    )


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 19:
        raise ValidationError(f"{name} must be a task id")
    return int(value)


class UI:
    """The application's state: stores, the cluster view, templates."""

    def __init__(self, settings: UISettings) -> None:
        self.settings = settings
        self.db = make_database(settings.dsn, retry_deadline=5.0)
        self.tasks = TaskStore(self.db)
        self.dashboard = DashboardStore(self.db)
        self.schedules = ScheduleStore(self.db)
        self.cluster = ClusterView(
            settings.zookeeper, settings.cluster, settings.zookeeper_security, settings.members
        )
        self.env = environment()
        self._counts: tuple[float, dict[str, int]] | None = None

    def close(self) -> None:
        self.cluster.close()
        self.db.close()

    # -- rendering ---------------------------------------------------------------
    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        notice = None
        code = request.query_params.get("notice")
        if code in NOTICES:
            notice = NOTICES[code].format(
                id=request.query_params.get("id", ""), name=request.query_params.get("name", "")
            )
        base = {
            "request": request,
            "csrf": request.state.csrf,
            "csrf_field": security.CSRF_FIELD,
            "cluster_name": self.settings.cluster,
            "auth": self.settings.auth,
            "version": __version__,
            "notice": notice,
            "states": [s.value for s in TaskState],
            "poll_ms": int(self.settings.poll_interval * 1000),
            "path": request.url.path,
            "page": "",
        }
        html = self.env.get_template(name).render({**base, **context})
        return HTMLResponse(html, status_code=status)

    def problem(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return self.render(
            request, "problem.html", {"title": title, "message": message}, status=status
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(fn, *args)

    # -- dashboard -----------------------------------------------------------------
    def _counts_now(self) -> dict[str, int]:
        now = time.monotonic()
        if self._counts is None or now - self._counts[0] > COUNTS_TTL:
            self._counts = (now, self.dashboard.counts())
        return self._counts[1]

    def dashboard_context(self) -> dict[str, Any]:
        counts = self._counts_now()
        running = self.dashboard.running_owners()
        snapshot: ClusterSnapshot = self.cluster.snapshot(running)
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "chart": throughput_bars(self.dashboard.throughput()),
            "snapshot": snapshot,
            "leadership": self.dashboard.leadership(),
        }

    async def home(self, request: Request) -> Response:
        context = await self.call(self.dashboard_context)
        return self.render(request, "dashboard.html", {"page": "dashboard", **context})

    async def home_live(self, request: Request) -> Response:
        context = await self.call(self.dashboard_context)
        return self.render(request, "_dashboard_live.html", context)

    # -- task list -------------------------------------------------------------------
    async def task_list(self, request: Request) -> Response:
        params = dict(request.query_params)
        kept = {
            k: v
            for k, v in params.items()
            if k in ("state", "plugin", "function", "datacenter", "since", "until", "within", "q")
            and v
        }
        try:
            flt = _filter_from(params)
            before = _int_param(params.get("before"), "before")
        except ValidationError as exc:
            return self.render(
                request,
                "tasks.html",
                {
                    "page": "tasks",
                    "error": str(exc),
                    "rows": [],
                    "result": None,
                    "form": kept,
                    "plugins": [],
                    "datacenters": [],
                    "older_url": None,
                    "continue_url": None,
                    "first_url": None,
                    "took": 0.0,
                },
                status=400,
            )
        started = time.monotonic()
        result = await self.call(lambda: self.dashboard.page(flt, before=before, limit=PAGE_SIZE))
        took = time.monotonic() - started
        older_url = continue_url = None
        if result.older is not None:
            older_url = "/tasks?" + urlencode({**kept, "before": result.older})
        if result.searched_to is not None:
            continue_url = "/tasks?" + urlencode({**kept, "before": result.searched_to})
        first_url = ("/tasks?" + urlencode(kept)) if before is not None else None
        return self.render(
            request,
            "tasks.html",
            {
                "page": "tasks",
                "error": None,
                "rows": result.rows,
                "result": result,
                "form": kept,
                "older_url": older_url,
                "continue_url": continue_url,
                "first_url": first_url,
                "took": took,
            },
        )

    # -- one task ----------------------------------------------------------------------
    def _task_context(self, task: Task) -> dict[str, Any]:
        last = task.attempts[-1] if task.attempts else None
        return {
            "task": task,
            "attempts": list(reversed(task.attempts)),  # the latest first
            "last": last,
            "can_abort": task.state in (TaskState.QUEUED, TaskState.RUNNING)
            and not task.abort_requested,
            "can_retry": task.state in (TaskState.FAILED, TaskState.ABORTED, TaskState.EXPIRED),
            "Outcome": Outcome,
        }

    async def _task(self, request: Request) -> Task | Response:
        try:
            task_id = _int_param(request.path_params["task_id"], "task id")
            assert task_id is not None
            return await self.call(self.tasks.get, task_id)
        except (ValidationError, AssertionError):
            return self.problem(request, 404, "No such task", "That is not a task id.")
        except TaskNotFoundError:
            return self.problem(
                request,
                404,
                "No such task",
                f"There is no task {request.path_params['task_id']}: it may have been pruned "
                "by retention.",
            )

    async def task_detail(self, request: Request) -> Response:
        task = await self._task(request)
        if isinstance(task, Response):
            return task
        return self.render(request, "task.html", {"page": "tasks", **self._task_context(task)})

    async def task_live(self, request: Request) -> Response:
        task = await self._task(request)
        if isinstance(task, Response):
            return task
        return self.render(request, "_task_live.html", self._task_context(task))

    # -- actions -----------------------------------------------------------------------
    async def _form(self, request: Request) -> dict[str, str] | None:
        """The posted form if its CSRF token and origin check out; None otherwise."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return None
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not security.origin_ok(request.headers.get("origin"), request.headers.get("host")):
            return None
        if not security.csrf_ok(
            request.cookies.get(security.CSRF_COOKIE), form.get(security.CSRF_FIELD)
        ):
            return None
        return form

    def _forbidden(self, request: Request) -> HTMLResponse:
        return self.problem(
            request,
            403,
            "Request refused",
            "The form's security token did not match (CSRF protection). Reload the page and "
            "try again.",
        )

    async def task_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("abort", "retry"):
            return self.problem(request, 404, "Not found", "No such page.")
        task = await self._task(request)
        if isinstance(task, Response):
            return task
        if request.method == "GET":  # the confirmation step
            return self.render(
                request, "confirm.html", {"page": "tasks", "action": action, "task": task}
            )
        if await self._form(request) is None:
            return self._forbidden(request)
        try:
            if action == "abort":
                state = await self.call(self.tasks.request_abort, task.id)
                code = "aborted" if state is TaskState.ABORTED else "abort-requested"
            else:
                await self.call(self.tasks.retry, task.id)
                code = "retried"
        except TaskStateError as exc:
            return self.problem(request, 409, f"Cannot {action} task {task.id}", str(exc))
        query = urlencode({"notice": code, "id": task.id})
        return RedirectResponse(f"/tasks/{task.id}?{query}", status_code=303)

    # -- schedules ---------------------------------------------------------------------
    async def schedule_list(self, request: Request) -> Response:
        schedules = await self.call(self.schedules.list_all)
        return self.render(request, "schedules.html", {"page": "schedules", "schedules": schedules})

    async def schedule_action(self, request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("pause", "resume"):
            return self.problem(request, 404, "Not found", "No such page.")
        if await self._form(request) is None:
            return self._forbidden(request)
        try:
            if action == "pause":
                await self.call(self.schedules.pause, name)
            else:
                await self.call(self.schedules.resume, name)
        except ScheduleNotFoundError as exc:
            return self.problem(request, 404, "No such schedule", str(exc))
        query = urlencode({"notice": f"{action}d", "name": name})
        return RedirectResponse(f"/schedules?{query}", status_code=303)

    # -- login (token auth) ----------------------------------------------------------
    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never redirect off-site
        if request.method == "GET":
            return self.render(
                request, "login.html", {"page": "login", "next": target, "failed": False}
            )
        form = await self._form(request)
        if form is None:
            return self._forbidden(request)
        if not self.settings.auth.check_token(form.get("token", "")):
            return self.render(
                request, "login.html", {"page": "login", "next": target, "failed": True}, status=401
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE,
            self.settings.auth.session_value(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if await self._form(request) is None:
            return self._forbidden(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE)
        return response

    async def on_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreError):
            return self.problem(
                request, 503, "Database unavailable", f"The task database did not answer: {exc}"
            )
        return self.problem(request, 500, "Error", str(exc))

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.problem(request, 404, "Not found", "No such page.")

    async def probe(self, request: Request) -> Response:
        """Embedded mode: the node's /metrics, /healthz or /readyz (cluster/endpoints.py)."""
        assert self.settings.probes is not None  # routed only when set
        found = await self.call(self.settings.probes.answer, request.url.path)
        assert found is not None  # routed only for its paths
        status, body, content_type = found
        return Response(body, status_code=status, media_type=content_type)

    # -- middleware -----------------------------------------------------------------------
    async def guard(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Auth, a CSRF cookie for every browser, and strict security headers."""
        if self.settings.probes is not None and request.url.path in PROBE_PATHS:
            # Scrapers and load balancers: no login, no cookie (as on a cluster node).
            return await call_next(request)
        cookie = request.cookies.get(security.CSRF_COOKIE)
        request.state.csrf = cookie or security.new_csrf_token()
        auth = self.settings.auth
        open_path = request.url.path == "/login" or request.url.path.startswith("/static/")
        if not open_path and not auth.allows(
            request.headers.get("authorization"), request.cookies.get(security.SESSION_COOKIE)
        ):
            response: Response
            if auth.basic_user is not None:
                response = Response(
                    "authentication required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="taskman", charset="UTF-8"'},
                )
            elif request.method == "GET":
                target = quote(
                    request.url.path + ("?" + request.url.query if request.url.query else "")
                )
                response = RedirectResponse(f"/login?next={target}", status_code=303)
            else:
                response = Response("authentication required\n", status_code=401)
        else:
            response = await call_next(request)
        if cookie is None:
            response.set_cookie(
                security.CSRF_COOKIE,
                request.state.csrf,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def create_app(settings: UISettings) -> Starlette:
    ui = UI(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(ui.close)

    routes = [
        Route("/", ui.home),
        Route("/live/dashboard", ui.home_live),
        Route("/tasks", ui.task_list),
        Route("/tasks/{task_id}", ui.task_detail),
        Route("/tasks/{task_id}/live", ui.task_live),
        Route("/tasks/{task_id}/{action:str}", ui.task_action, methods=["GET", "POST"]),
        Route("/schedules", ui.schedule_list),
        Route("/schedules/{name}/{action}", ui.schedule_action, methods=["POST"]),
        Route("/login", ui.login, methods=["GET", "POST"]),
        Route("/logout", ui.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if settings.probes is not None:
        routes += [Route(path, ui.probe) for path in PROBE_PATHS]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=ui.guard)],
        lifespan=lifespan,
        exception_handlers={TaskmanError: ui.on_error, 404: ui.not_found},
    )
    app.state.ui = ui
    return app
