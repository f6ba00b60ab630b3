"""taskman ui: serve the admin web UI (docs/ui.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from taskman.cli.common import add_dsn, env_flag, require_dsn
from taskman.cli.exitcodes import Exit
from taskman.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the admin web UI",
        epilog="example: taskman ui --dsn mysql://taskman:pw@db:3306/taskman "
        "--zookeeper zk1:2181 --cluster prod --listen 127.0.0.1:8080\n"
        "Anywhere but loopback it needs TASKMAN_UI_TOKEN (or --token-file) or "
        "TASKMAN_UI_BASIC_AUTH=user:password, and refuses to start without.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env_flag(
        p, "--config", "TASKMAN_CONFIG", "node configuration to read dsn, zookeeper, cluster from"
    )
    add_dsn(p)
    env_flag(p, "--zookeeper", "TASKMAN_ZOOKEEPER", "ZooKeeper ensemble, host:port,...")
    env_flag(p, "--cluster", "TASKMAN_CLUSTER", "cluster name", default="default")
    env_flag(p, "--zookeeper-auth", "TASKMAN_ZOOKEEPER_AUTH", "ZooKeeper digest user:password")
    env_flag(p, "--listen", "TASKMAN_UI_LISTEN", "host:port to serve on", default="127.0.0.1:8080")
    env_flag(p, "--token-file", "TASKMAN_UI_TOKEN_FILE", "file holding the access token")
    p.set_defaults(handler=ui)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: {value!r} is not host:port (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


def require_ui_extra(command: str) -> None:
    """A clear error, before any work, when the 'ui' extra (starlette, jinja2, uvicorn) is
    missing: a plain ``pip install taskman`` leaves it out."""
    try:
        import uvicorn  # noqa: F401

        import taskman.web  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{command} serves the web UI, which needs the 'ui' extra: "
            f"pip install 'taskman[ui]' ({exc})"
        ) from None


def ui(args: argparse.Namespace) -> int:
    require_ui_extra("taskman ui")
    import uvicorn

    from taskman.cluster.zk import ZkSecurity, zk_security
    from taskman.web import AuthConfig, UISettings, check_bind, create_app

    dsn, zookeeper, cluster = args.dsn, args.zookeeper, args.cluster
    zk_identity = ZkSecurity(auth=args.zookeeper_auth)
    if args.config:
        from taskman.config import load_config

        config = load_config(args.config)
        dsn, zookeeper, cluster = dsn or config.dsn, zookeeper or config.zookeeper, config.cluster
        zk_identity = zk_security(config)
    args.dsn = dsn
    host, port = parse_listen(args.listen)
    token = os.environ.get("TASKMAN_UI_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc}") from None
    # Secrets come from the environment or a file only: argv is visible to every user.
    auth = AuthConfig.from_values(token, os.environ.get("TASKMAN_UI_BASIC_AUTH"))
    check_bind(host, auth)
    app = create_app(
        UISettings(
            dsn=require_dsn(args),
            zookeeper=zookeeper,
            cluster=cluster,
            auth=auth,
            zookeeper_security=zk_identity,
        )
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"taskman ui: serving cluster {cluster!r} on http://{shown}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return int(Exit.OK)
