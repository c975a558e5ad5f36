"""What a configuration reload changes, pool by pool.

A pure comparison of the running configuration with the new one; the
Supervisor carries it out. Each kind of change has the cheapest way to apply
it that still leaves every worker running what the file says:

- nothing changed: a rolling restart, so new code is picked up;
- `replicas`: workers are added, or drained and removed;
- the command (`exec`, `args`, `env`, `cwd`, `port_arg`): a rolling restart
  onto the new command;
- limits, restart budget, timeouts: applied to the running workers;
- proxy settings: new listener, route and cluster versions pushed over xDS
  to the pool's Envoy (its admin port or bootstrap directory need a new
  Envoy process, the one case where it restarts);
- a pool in the file only now: started; a pool no longer in it: drained and
  stopped; a pool switching mode: stopped, then started in the new mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from monoceros.config import Config, PoolConfig

COMMAND_FIELDS = ("exec", "exec_path", "args", "env", "cwd")
ENVOY_PROCESS_FIELDS = ("admin_port", "proxy_config_path")


@dataclass(frozen=True)
class PoolChange:
    name: str
    old: PoolConfig | None
    new: PoolConfig | None
    kinds: frozenset[str] = frozenset()  # replicas, command, settings, proxy, envoy

    @property
    def added(self) -> bool:
        return self.old is None

    @property
    def removed(self) -> bool:
        return self.new is None

    @property
    def mode_changed(self) -> bool:
        return (
            self.old is not None
            and self.new is not None
            and self.old.proxy_mode != self.new.proxy_mode
        )

    @property
    def restart_workers(self) -> bool:
        """A rolling restart is due: the command changed, or nothing did."""
        return "command" in self.kinds or not self.kinds


@dataclass(frozen=True)
class ReloadPlan:
    pools: list[PoolChange] = field(default_factory=list)
    admin_changed: bool = False
    xds_changed: bool = False


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    before = {p.name: p for p in old.pools}
    after = {p.name: p for p in new.pools}
    changes = [PoolChange(name, before[name], None) for name in before
               if name not in after]
    for name, pool in after.items():
        previous = before.get(name)
        if previous is None:
            changes.append(PoolChange(name, None, pool))
        else:
            changes.append(PoolChange(name, previous, pool, _kinds(previous, pool)))
    return ReloadPlan(
        pools=changes,
        admin_changed=old.admin != new.admin,
        xds_changed=old.xds != new.xds,
    )


def _kinds(old: PoolConfig, new: PoolConfig) -> frozenset[str]:
    kinds = set()
    if old.replicas != new.replicas:
        kinds.add("replicas")
    if any(getattr(old, f) != getattr(new, f) for f in COMMAND_FIELDS):
        kinds.add("command")
    if old.server is not None and new.server is not None:
        if old.server.port_arg != new.server.port_arg:
            kinds.add("command")
        if any(
            getattr(old.server, f) != getattr(new.server, f)
            for f in ENVOY_PROCESS_FIELDS
        ):
            kinds.add("envoy")
        proxy_old = dataclasses.replace(old.server, port_arg=new.server.port_arg)
        if proxy_old != new.server:
            kinds.add("proxy")
    rest_old = _settings(old)
    if rest_old != _settings(new):
        kinds.add("settings")
    return frozenset(kinds)


def _settings(pool: PoolConfig) -> PoolConfig:
    """The pool with everything but its settings blanked out, to compare."""
    return dataclasses.replace(
        pool,
        replicas=1,
        exec="",
        exec_path="",
        args=(),
        env=(),
        cwd=None,
        server=None,
    )


def describe(change: PoolChange) -> str:
    if change.added:
        return "added: started"
    if change.removed:
        return "removed: drained and stopped"
    if change.mode_changed:
        return "mode changed: stopped and started again"
    assert change.old is not None and change.new is not None
    parts = []
    if "replicas" in change.kinds:
        parts.append(f"scaled {change.old.replicas} -> {change.new.replicas}")
    if "settings" in change.kinds:
        parts.append("settings applied to running workers")
    if "proxy" in change.kinds:
        parts.append("proxy settings pushed over xDS")
    if "envoy" in change.kinds:
        parts.append("Envoy restarted with its new bootstrap")
    if "command" in change.kinds:
        parts.append("command changed: rolling restart")
    if not change.kinds:
        parts.append("unchanged: rolling restart")
    return "; ".join(parts)
