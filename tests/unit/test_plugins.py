"""taskman.plugins: manifests, the registry, versions side by side, and the shipped examples."""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys
from pathlib import Path

import pytest

from taskman.errors import PluginError
from taskman.plugins import EXAMPLES_DIR, Plugin, PluginRegistry, load_manifest
from taskman.plugins.manifest import MANIFEST, check_reference, version_key

SECRET = "hunter2-secret-value"


def make_plugin(
    base: Path,
    folder: str,
    name: str = "demo",
    version: str = "1.0",
    extra: str = "",
    *,
    src: bool = True,
    allow_root: bool = True,
) -> Path:
    directory = base / folder
    directory.mkdir(parents=True)
    if src:
        (directory / "src").mkdir()
    path_line = 'path = ["src"]\n' if src else ""
    # The tests may run as root, where a plugin must say it may run as root.
    root_line = "allow_root = true\n" if allow_root else ""
    (directory / MANIFEST).write_text(
        f'name = "{name}"\nversion = "{version}"\n{path_line}{root_line}{extra}', "utf-8"
    )
    return directory


# -- manifests -----------------------------------------------------------------------------


def test_valid_manifest(tmp_path: Path) -> None:
    directory = make_plugin(
        tmp_path,
        "p",
        extra=(
            'description = "d"\nfunctions = ["demo.tasks:*"]\n'
            f'[env]\nTOKEN = "{SECRET}"\nCOUNT = 3\nFLAG = true\nRATIO = 0.5\n'
        ),
    )
    plugin = load_manifest(directory)
    assert plugin.name == "demo"
    assert plugin.version == "1.0"
    assert plugin.directory == directory.resolve()
    assert plugin.python == sys.executable
    assert plugin.sys_path == (str((directory / "src").resolve()),)
    assert plugin.env == {"TOKEN": SECRET, "COUNT": "3", "FLAG": "True", "RATIO": "0.5"}
    assert plugin.functions == ("demo.tasks:*",)
    assert plugin.description == "d"


def test_manifest_defaults(tmp_path: Path) -> None:
    plugin = load_manifest(make_plugin(tmp_path, "p", src=False))
    assert plugin.sys_path == ()
    assert plugin.env == {}
    assert plugin.functions is None
    assert plugin.description == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('colour = "red"\n', "unknown key 'colour'"),
        ('python = ""\n', "'python' must be the path of an interpreter"),
        ("python = 3\n", "'python' must be the path of an interpreter"),
        ('python = "/no/such/python"\n', "interpreter /no/such/python does not exist"),
        ('path = "src"\n', "'path' must be a list of directories"),
        ("path = [1]\n", "'path' must be a list of directories"),
        ('env = "A=1"\n', r"\[env\] must map names to strings"),
        ("[env]\nA = [1, 2]\n", r"\[env\] must map names to strings"),
        ("[env.A]\nb = 1\n", r"\[env\] must map names to strings"),
        ('functions = "demo:*"\n', "'functions' must be a list of patterns"),
        ("functions = [1]\n", "'functions' must be a list of patterns"),
        ('functions = ["demo.tasks.*"]\n', "function pattern 'demo.tasks.\\*' must contain ':'"),
    ],
)
def test_invalid_manifest_names_the_file(tmp_path: Path, extra: str, message: str) -> None:
    directory = make_plugin(tmp_path, "p", extra=extra, src=False)
    with pytest.raises(PluginError, match=message) as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(
        PluginError, match="known: allow_root, concurrency, description, env, fork, functions"
    ):
        load_manifest(make_plugin(tmp_path, "p", extra="x = 1\n"))


@pytest.mark.parametrize("name", ["", "-demo", "de mo", "demo/x", "x" * 101])
def test_bad_name(tmp_path: Path, name: str) -> None:
    directory = make_plugin(tmp_path, "p", name=name)
    with pytest.raises(PluginError, match="'name' must be a plugin name") as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)


def test_missing_name_and_version(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / MANIFEST).write_text('version = "1.0"\n', "utf-8")
    with pytest.raises(PluginError, match=r"'name' must be a plugin name.*got None"):
        load_manifest(directory)
    (directory / MANIFEST).write_text('name = "x"\n', "utf-8")
    with pytest.raises(PluginError, match=r"'version' must be dotted numbers.*got None"):
        load_manifest(directory)


@pytest.mark.parametrize("version", ["1.x", "", "v1", "1.", "1..0", "latest"])
def test_bad_version(tmp_path: Path, version: str) -> None:
    directory = make_plugin(tmp_path, "p", version=version)
    with pytest.raises(PluginError, match="'version' must be dotted numbers") as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)


def test_numeric_version_in_toml_is_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / MANIFEST).write_text('name = "x"\nversion = 1.0\n', "utf-8")
    with pytest.raises(PluginError, match=r"'version' must be dotted numbers.*got 1\.0"):
        load_manifest(directory)


def test_missing_path_directory(tmp_path: Path) -> None:
    directory = make_plugin(tmp_path, "p", src=False, extra='path = ["src", "lib"]\n')
    (directory / "src").mkdir()
    (directory / "lib").write_text("not a directory", "utf-8")
    with pytest.raises(PluginError, match="path entry 'lib' is not a directory") as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)


def test_non_executable_python(tmp_path: Path) -> None:
    directory = make_plugin(tmp_path, "p", extra='python = "venv/bin/python"\n')
    interpreter = directory / "venv" / "bin" / "python"
    interpreter.parent.mkdir(parents=True)
    interpreter.write_text("#!/bin/sh\n", "utf-8")
    interpreter.chmod(0o644)
    with pytest.raises(PluginError, match=r"interpreter venv/bin/python .*not executable") as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)
    interpreter.chmod(0o755)
    assert load_manifest(directory).python == str(interpreter)


def test_toml_syntax_error(tmp_path: Path) -> None:
    directory = make_plugin(tmp_path, "p", extra="oops = = 1\n")
    with pytest.raises(PluginError, match="cannot read") as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=f"no {MANIFEST}") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / MANIFEST) in str(info.value)


def test_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    directory = make_plugin(tmp_path, "p")
    (directory / MANIFEST).write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(PluginError, match="cannot read"):
        load_manifest(directory)


def test_check_reference() -> None:
    check_reference("demo.tasks:add")
    with pytest.raises(
        PluginError, match=re.escape("malformed function reference 'demo.tasks.add'")
    ):
        check_reference("demo.tasks.add")


# -- allows, summary, repr -----------------------------------------------------------------


def _plugin(functions: tuple[str, ...] | None) -> Plugin:
    return Plugin(
        name="demo",
        version="1.0",
        directory=Path("/p"),
        python=sys.executable,
        sys_path=(),
        env={"TOKEN": SECRET, "MODE": "prod"},
        functions=functions,
    )


def test_allows_with_an_allowlist() -> None:
    plugin = _plugin(("demo.tasks:*", "demo.extra:run"))
    assert plugin.allows("demo.tasks:add")
    assert plugin.allows("demo.tasks:Class.method")
    assert plugin.allows("demo.extra:run")
    assert not plugin.allows("demo.extra:other")
    assert not plugin.allows("demo.tasksx:add")
    assert not plugin.allows("os:system")
    assert not plugin.allows("DEMO.TASKS:add")  # case-sensitive


def test_no_allowlist_allows_everything_and_empty_allows_nothing() -> None:
    assert _plugin(None).allows("os:system")
    assert not _plugin(()).allows("demo.tasks:add")


def test_summary_and_repr_never_contain_env_values() -> None:
    plugin = _plugin(None)
    summary = plugin.summary()
    assert summary == {"name": "demo", "version": "1.0", "env_keys": ["MODE", "TOKEN"]}
    assert SECRET not in str(summary)
    assert "prod" not in str(summary)
    assert SECRET not in repr(plugin)


# -- the registry --------------------------------------------------------------------------


def test_scan_keeps_good_plugins_and_lists_the_broken_one(tmp_path: Path) -> None:
    make_plugin(tmp_path, "a-good", name="alpha")
    broken = make_plugin(tmp_path, "b-broken", name="beta", version="1.x")
    make_plugin(tmp_path, "c-good", name="gamma")
    registry = PluginRegistry.scan([tmp_path])
    assert registry.available() == {"alpha": ["1.0"], "gamma": ["1.0"]}
    assert len(registry.problems) == 1
    assert str(broken / MANIFEST) in registry.problems[0]
    assert "'version' must be dotted numbers" in registry.problems[0]


def test_scan_finds_nested_manifests_and_one_at_the_top(tmp_path: Path) -> None:
    make_plugin(tmp_path / "group", "nested", name="nested")
    (tmp_path / MANIFEST).write_text('name = "top"\nversion = "3"\nallow_root = true\n', "utf-8")
    registry = PluginRegistry.scan([tmp_path])
    assert registry.available() == {"nested": ["1.0"], "top": ["3"]}
    assert registry.problems == []


def test_scan_reports_a_missing_directory(tmp_path: Path) -> None:
    make_plugin(tmp_path, "p", name="alpha")
    missing = tmp_path / "missing"
    registry = PluginRegistry.scan([missing, tmp_path])
    assert registry.available() == {"alpha": ["1.0"]}
    assert registry.problems == [f"{missing}: plugin directory does not exist"]


def test_duplicate_version_keeps_the_first(tmp_path: Path) -> None:
    first = make_plugin(tmp_path, "a", name="dup")
    second = make_plugin(tmp_path, "b", name="dup")
    registry = PluginRegistry.scan([tmp_path])
    assert registry.resolve("dup").directory == first.resolve()
    assert len(registry.problems) == 1
    assert "plugin dup 1.0 is also installed at" in registry.problems[0]
    assert str(second.resolve()) in registry.problems[0]


@pytest.fixture
def versions(tmp_path: Path) -> PluginRegistry:
    for version in ("1.0", "9.0", "10.0", "2.5"):
        make_plugin(tmp_path, f"demo-{version}", version=version)
    make_plugin(tmp_path, "other", name="other", version="1.9")
    make_plugin(tmp_path, "other-2", name="other", version="1.10")
    return PluginRegistry.scan([tmp_path])


def test_resolve_gives_the_highest_version_by_numeric_order(versions: PluginRegistry) -> None:
    assert versions.problems == []
    assert versions.resolve("demo").version == "10.0"
    assert versions.resolve("other").version == "1.10"


def test_resolve_pinned_version(versions: PluginRegistry) -> None:
    plugin = versions.resolve("demo", "9.0")
    assert plugin.version == "9.0"
    assert plugin.directory.name == "demo-9.0"


def test_resolve_unknown_version_lists_installed(versions: PluginRegistry) -> None:
    with pytest.raises(PluginError, match=r"has no version 3\.0") as info:
        versions.resolve("demo", "3.0")
    assert "installed: 1.0, 2.5, 9.0, 10.0" in str(info.value)


def test_resolve_unknown_plugin(versions: PluginRegistry) -> None:
    with pytest.raises(PluginError, match="plugin 'nope' is not installed on this node"):
        versions.resolve("nope")
    with pytest.raises(PluginError, match="plugin 'nope' is not installed"):
        versions.resolve("nope", "1.0")


def test_available_sorts_names_and_versions_numerically(versions: PluginRegistry) -> None:
    assert versions.available() == {
        "demo": ["1.0", "2.5", "9.0", "10.0"],
        "other": ["1.9", "1.10"],
    }


def test_version_key_is_numeric() -> None:
    assert version_key("10.0") > version_key("9.0")
    assert version_key("1.10") > version_key("1.9")
    assert version_key("1.0.1") > version_key("1.0")


# -- the shipped examples ------------------------------------------------------------------


def test_shipped_examples_load_without_problems() -> None:
    registry = PluginRegistry.scan([EXAMPLES_DIR])
    assert registry.problems == []
    assert registry.available() == {"demo": ["1.0"], "greeter": ["1.0", "2.0"]}
    assert registry.resolve("greeter").version == "2.0"
    assert registry.resolve("greeter", "1.0").directory == (EXAMPLES_DIR / "greeter-1").resolve()
    demo = registry.resolve("demo")
    assert demo.allows("demo.tasks:add")
    assert not demo.allows("os:system")
    assert demo.sys_path == (str((EXAMPLES_DIR / "demo" / "src").resolve()),)
    assert "hello from demo" not in str(demo.summary())
    for plugin in (demo, registry.resolve("greeter", "1.0"), registry.resolve("greeter")):
        assert os.path.isdir(plugin.sys_path[0])


# -- who runners run as --------------------------------------------------------------------


def test_root_node_refuses_a_plugin_that_would_run_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the rule applies only when the node runs as root")
    directory = make_plugin(tmp_path, "p", allow_root=False)
    with pytest.raises(PluginError, match="would run as root"):
        load_manifest(directory)


def test_user_and_group_resolve_to_ids(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    plugin = load_manifest(
        make_plugin(tmp_path, "p", extra='user = "nobody"\ngroup = "nogroup"\n', allow_root=False)
    )
    assert plugin.run_as == (nobody.pw_uid, grp.getgrnam("nogroup").gr_gid)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('user = "no-such-user-x"\n', "no such user 'no-such-user-x'"),
        ('user = "nobody"\ngroup = "no-such-group-x"\n', "no such group"),
        ('group = "nogroup"\n', "'group' needs a 'user'"),
        ('user = "root"\n', "'user' is root"),
        ("allow_root = 1\n", "'allow_root' must be true or false"),
    ],
)
def test_bad_run_as_settings(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_manifest(make_plugin(tmp_path, "p", extra=extra, allow_root=False))


def test_overlapping_directories_load_each_manifest_once(tmp_path: Path) -> None:
    make_plugin(tmp_path / "outer", "inner", name="inner")
    registry = PluginRegistry.scan([tmp_path / "outer", tmp_path / "outer" / "inner", tmp_path])
    assert registry.available() == {"inner": ["1.0"]}
    assert registry.problems == []


# -- pooled runners ------------------------------------------------------------------------


def test_isolation_defaults_to_a_process_per_attempt(tmp_path: Path) -> None:
    plugin = load_manifest(make_plugin(tmp_path, "p"))
    assert plugin.isolation == "process" and plugin.isolation_for("demo.tasks:add") == "process"
    assert plugin.max_tasks_per_runner == 1000 and plugin.max_runner_memory_mb is None


def test_pooled_isolation_with_per_function_overrides(tmp_path: Path) -> None:
    extra = (
        'isolation = "pooled"\nmax_tasks_per_runner = 50\nmax_runner_memory_mb = 300\n'
        '[isolation_by_function]\n"demo.tasks:resize_*" = "process"\n'
        '"demo.tasks:resize_small" = "pooled"\n'
    )
    plugin = load_manifest(make_plugin(tmp_path, "p", extra=extra))
    assert plugin.isolation_for("demo.tasks:add") == "pooled"
    assert plugin.isolation_for("demo.tasks:resize_big") == "process"
    assert plugin.isolation_for("demo.tasks:resize_small") == "pooled"  # exact name first
    assert (plugin.max_tasks_per_runner, plugin.max_runner_memory_mb) == (50, 300)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('isolation = "thread"\n', '\'isolation\' must be "process" or "pooled"'),
        ("isolation = true\n", "'isolation' must be"),
        ("max_tasks_per_runner = 0\n", "'max_tasks_per_runner' must be a whole number >= 1"),
        ('max_tasks_per_runner = "9"\n', "'max_tasks_per_runner' must be"),
        ("max_runner_memory_mb = 4\n", "'max_runner_memory_mb' must be a whole number >= 16"),
        ("isolation_by_function = 3\n", "[isolation_by_function] must map"),
        ('[isolation_by_function]\n"nocolon" = "pooled"\n', "must contain ':'"),
        ('[isolation_by_function]\n"a.b:c" = "fork"\n', "[isolation_by_function] 'a.b:c' must be"),
    ],
)
def test_bad_pooled_settings_name_the_file(tmp_path: Path, extra: str, message: str) -> None:
    directory = make_plugin(tmp_path, "p", extra=extra)
    with pytest.raises(PluginError) as info:
        load_manifest(directory)
    assert str(directory / MANIFEST) in str(info.value)
    assert message in str(info.value)
