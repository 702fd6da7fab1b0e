# -*- test-case-name: tests.test_reload -*-
"""
Reloading the config: one code path for SIGHUP and the admin socket.

A reload reads the file, parses and validates it, builds a whole new
L{Runtime} off to the side and swaps one reference.  Reloads are serialized
by one L{DeferredLock}; a reload that waited reads the file when its turn
comes, so it applies the latest version.  A reload that fails changes
nothing.  Static settings (C{[server]}, C{[acme]}) keep their running values
until a restart, and the answer says which of them changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from revproxy.config import (
    Config,
    ConfigError,
    ConfigFileError,
    checkConfig,
    loadConfig,
)
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime

_log = Logger()

#: The tables whose keys are read once, at start-up.
STATIC_TABLES = ("server", "acme")


def staticChanges(old: Config, new: Config) -> list[str]:
    """
    The static keys whose value differs between C{old} and C{new}, as key
    paths (C{"server.listen_http"}).
    """
    changed = []
    for table in STATIC_TABLES:
        before = getattr(old, table)
        after = getattr(new, table)
        for field in attrs.fields(type(before)):
            if getattr(before, field.name) != getattr(after, field.name):
                changed.append(f"{table}.{field.name}")
    return changed


def siteChanges(old: Config, new: Config) -> dict[str, Any]:
    """
    Which sites a new config adds, removes and changes, by name; a site is
    changed when any of its resolved settings (defaults included) differs.
    """
    before = {site.name: site for site in old.sites}
    after = {site.name: site for site in new.sites}
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    changed = [name for name in after if name in before and after[name] != before[name]]
    unchanged = len(after) - len(added) - len(changed)
    return {
        "added": added,
        "removed": removed,
        "changed": changed,
        "unchanged": unchanged,
    }


def configWarnings(config: Config) -> list[str]:
    """
    Things that are valid but that an operator should know about.
    """
    warnings = []
    for index, site in enumerate(config.sites):
        if not site.upstream_tls_verify:
            warnings.append(
                f"sites[{index}].upstream_tls_verify: false: the certificates of "
                f'site "{site.name}"\'s https:// upstreams are not verified '
                "(anyone on the path can read and change its traffic)"
            )
    return warnings


class Reloader:
    """
    Applies the config file to the running proxy, one reload at a time.
    """

    def __init__(
        self,
        configPath: str,
        holder: RuntimeHolder,
        clock: IReactorTime,
        load: Callable[[str], Config] = loadConfig,
    ) -> None:
        self.configPath = configPath
        self.holder = holder
        self._clock = clock
        self._load = load
        self._lock = DeferredLock()
        #: Called with a new runtime just before it becomes current; one
        #: that raises fails the reload and nothing is swapped.
        self.beforeSwap: list[Callable[[Runtime], None]] = []
        #: Called with the new runtime once it is current.
        self.afterSwap: list[Callable[[Runtime], None]] = []
        #: Called with the source of every reload (not of a check) as it
        #: begins, once its turn has come.
        self.onStart: list[Callable[[str], None]] = []
        #: Called with the answer of every reload (not of a check).
        self.onResult: list[Callable[[dict[str, Any]], None]] = []

    def reload(self, source: str) -> Deferred[dict[str, Any]]:
        """
        Reload the config file; fires with the answer, never fails.

        @param source: who asked (C{"SIGHUP"}, C{"admin"}), for the log.
        """
        return self._lock.run(self._reloadOnce, source)

    def _reloadOnce(self, source: str) -> dict[str, Any]:
        # The listeners are told while the lock is held: releasing it runs
        # the next waiting reload at once, and each reload's start and
        # result must reach them in order (systemd pairs RELOADING=1 with
        # the next READY=1).
        for starting in self.onStart:
            try:
                starting(source)
            except Exception:
                _log.failure("A reload listener failed")
        return self._tell(self._once(source, True))

    def _tell(self, answer: dict[str, Any]) -> dict[str, Any]:
        for listener in self.onResult:
            try:
                listener(answer)
            except Exception:
                _log.failure("A reload listener failed")
        return answer

    def check(self) -> Deferred[dict[str, Any]]:
        """
        Validate the file on disk and say what a reload would change,
        without changing anything.
        """
        return self._lock.run(self._once, "check", False)

    def _once(self, source: str, apply: bool) -> dict[str, Any]:
        try:
            return self._attempt(source, apply)
        except Exception as e:
            _log.failure(
                "Reload ({source}) failed unexpectedly; nothing was applied",
                source=source,
            )
            return {
                "status": "error",
                "code": "internal",
                "message": f"internal error: {e}",
            }

    def _attempt(self, source: str, apply: bool) -> dict[str, Any]:
        verb = "Reload" if apply else "Check"
        if not self.configPath:
            return _error(
                "no_config_file",
                "running without a config file (quick mode): nothing to reload",
                [],
            )
        try:
            config = self._load(self.configPath)
        except ConfigFileError as e:
            _log.error(
                "{verb} ({source}) failed, nothing was applied: {message}",
                verb=verb,
                source=source,
                message=str(e),
            )
            return _error("config_unreadable", str(e), list(e.errors))
        except ConfigError as e:
            errors = list(e.errors)
            _log.error(
                "{verb} ({source}) failed, nothing was applied: {count} error(s) "
                "in {path}:\n  {errors}",
                verb=verb,
                source=source,
                count=len(errors),
                path=self.configPath,
                errors="\n  ".join(errors),
            )
            return _error(
                "config_invalid",
                f"{self.configPath} is invalid: " + "; ".join(errors),
                errors,
            )
        problems = checkConfig(config)
        if problems:
            return self._refused(
                verb,
                source,
                "config_invalid",
                f"{self.configPath} is invalid",
                problems,
            )
        current = self.holder.current
        restart = staticChanges(current.config, config)
        # Static settings keep their running values until a restart.
        effective = attrs.evolve(
            config, server=current.config.server, acme=current.config.acme
        )
        try:
            runtime = buildRuntime(effective, self._clock, previous=current)
        except ConfigError as e:
            return self._refused(
                verb,
                source,
                "certificate_invalid",
                "a certificate, key or CA file cannot be used",
                list(e.errors),
            )
        sites = siteChanges(current.config, effective)
        answer: dict[str, Any] = {
            "status": "ok",
            "generation": runtime.generation if apply else current.generation,
            "config_sha256": config.source_sha256,
            "sites": sites,
            "restart_required": restart,
            "warnings": configWarnings(config) + list(runtime.tls.warnings),
        }
        if not apply:
            answer["would_be_generation"] = runtime.generation
            return answer
        for prepare in self.beforeSwap:
            prepare(runtime)
        self.holder.current = runtime
        for follow in self.afterSwap:
            try:
                follow(runtime)
            except Exception:
                _log.failure(
                    "After reload ({source}): a follower failed", source=source
                )
        for warning in answer["warnings"]:
            _log.warn("{problem}", problem=warning)
        _log.info(
            "Reloaded ({source}): generation {generation}, sites +{added} "
            "-{removed} ~{changed} ={unchanged}{restart}",
            source=source,
            generation=runtime.generation,
            added=len(sites["added"]),
            removed=len(sites["removed"]),
            changed=len(sites["changed"]),
            unchanged=sites["unchanged"],
            restart=(
                "; waiting for a restart: " + ", ".join(restart) if restart else ""
            ),
        )
        return answer

    def _refused(
        self, verb: str, source: str, code: str, what: str, errors: list[str]
    ) -> dict[str, Any]:
        """
        Log and answer a reload or check refused for C{errors}.
        """
        _log.error(
            "{verb} ({source}) failed, nothing was applied: {errors}",
            verb=verb,
            source=source,
            errors="; ".join(errors),
        )
        return _error(code, f"{what}: " + "; ".join(errors), errors)


def _error(code: str, message: str, errors: list[str]) -> dict[str, Any]:
    return {"status": "error", "code": code, "message": message, "errors": errors}


__all__ = ["Reloader", "Runtime", "siteChanges", "staticChanges"]
