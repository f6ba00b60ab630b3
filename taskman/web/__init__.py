"""The admin web UI (``taskman ui``): dashboard, tasks, attempts, actions, schedules.

Needs the ``ui`` extra (starlette, jinja2, uvicorn); see docs/ui.md.
"""

from taskman.web.app import UISettings, create_app
from taskman.web.security import AuthConfig, check_bind

__all__ = ["AuthConfig", "UISettings", "check_bind", "create_app"]
