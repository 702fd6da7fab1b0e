# -*- test-case-name: tests.test_reload -*-
"""
Reloading the config: one code path for SIGHUP and the admin socket.

A reload reads the file, parses and validates it, builds a whole new
L{Runtime} off to the side and swaps one reference.  Reloads are serialized
by one L{DeferredLock}; a reload that waited reads the file when its turn
comes, so it applies the latest version.  A reload that fails changes
nothing.  Static settings (C{[server]}, C{[acme]}, C{[cluster]}) keep their
running values until a restart, and the answer says which of them changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from revproxy.config import (
    Config,
    ConfigError,
    ConfigFileError,
    checkConfig,
    loadConfig,
    routeWarnings,
)
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime

_log = Logger()

#: The tables whose keys are read once, at start-up.  C{[cluster]} may be
#: absent (L{None}).
STATIC_TABLES = ("server", "acme", "cluster")

#: Fields of the static tables that only say how a key was written, not what
#: runs: C{workers = "auto"} and the same count written as a number run the
#: same workers, so only the resolved C{server.workers} is compared.  The
#: secret file's permissions only matter for a warning.
_NOT_COMPARED = frozenset(
    {
        "server.workers_auto",
        "cluster.secret_file_mode",
        "cluster.redis_password_file_mode",
    }
)

#: Fields of the static tables that are not keys of the file but what a key
#: gave: a change is named by that key (a password rotated in the same file
#: is a change of C{cluster.redis_password_file}).
_REPORTED_AS = {
    "cluster.redis_host": "cluster.redis_url",
    "cluster.redis_port": "cluster.redis_url",
    "cluster.redis_db": "cluster.redis_url",
    "cluster.redis_tls": "cluster.redis_url",
    "cluster.redis_password": "cluster.redis_password_file",
    "cluster.secret": "cluster.secret_file",
}


def staticChanges(old: Config, new: Config) -> list[str]:
    """
    The static keys whose value differs between C{old} and C{new}, as key
    paths (C{"server.listen_http"}), each once; a table that one has and
    the other has not (C{[cluster]}) is named alone (C{"cluster"}).
    """
    changed: list[str] = []
    for table in STATIC_TABLES:
        before = getattr(old, table)
        after = getattr(new, table)
        if before is None and after is None:
            continue
        if before is None or after is None:
            changed.append(table)
            continue
        for field in attrs.fields(type(before)):
            key = f"{table}.{field.name}"
            if key in _NOT_COMPARED:
                continue
            if getattr(before, field.name) != getattr(after, field.name):
                key = _REPORTED_AS.get(key, key)
                if key not in changed:
                    changed.append(key)
    return changed


@attrs.frozen
class SiteChanges:
    """
    Which sites a new config adds, removes and changes, by name, and how
    many it keeps as they were.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: int


def siteChanges(old: Config, new: Config) -> SiteChanges:
    """
    Which sites a new config adds, removes and changes, by name; a site is
    changed when any of its resolved settings (defaults included) differs.
    """
    before = {site.name: site for site in old.sites}
    after = {site.name: site for site in new.sites}
    added = tuple(name for name in after if name not in before)
    removed = tuple(name for name in before if name not in after)
    changed = tuple(
        name for name in after if name in before and after[name] != before[name]
    )
    return SiteChanges(added, removed, changed, len(after) - len(added) - len(changed))


@attrs.frozen
class Applied:
    """
    A reload that swapped in a new runtime, or a check that would.

    @ivar generation: the generation serving now (after a reload, the new
        one).
    @ivar wouldBeGeneration: for a check, the generation a reload would
        make; L{None} for a reload.
    @ivar restartRequired: the static keys whose new value waits for a
        restart.
    @ivar failed: the followers (L{IReloadFollower.part}) that failed after
        the swap: the reload is only partially applied when there are any.
    """

    generation: int
    configSHA256: str
    sites: SiteChanges
    restartRequired: tuple[str, ...]
    warnings: tuple[str, ...]
    wouldBeGeneration: int | None = None
    failed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """
        Whether everything was applied.
        """
        return not self.failed


@attrs.frozen
class Refused:
    """
    A reload or check that changed nothing.

    @ivar code: a stable name for what went wrong (C{config_invalid},
        C{config_unreadable}, C{certificate_invalid}, C{no_config_file},
        C{internal}).
    @ivar errors: each problem, when there is a list of them.
    """

    code: str
    message: str
    errors: tuple[str, ...] | None = None

    ok = False


#: What a reload or check answers.
ReloadResult = Applied | Refused


class IReloadFollower(Interface):
    """
    A part of the proxy that follows the config through reloads.
    L{ReloadFollower} implements every method as doing nothing.
    """

    part = Attribute(
        "The part of the proxy the follower keeps up to date, for the log and "
        'the answer when it fails (C{"upstream health checks"}).'
    )

    def reloadStarting(source: str) -> None:
        """
        A reload (not a check) from C{source} begins, its turn come.
        """

    def prepare(runtime: Runtime) -> None:
        """
        C{runtime} is about to become current; raising refuses the reload
        and nothing is swapped.
        """

    def follow(runtime: Runtime) -> Deferred[Sequence[str]] | None:
        """
        C{runtime} is now current (called in the same reactor turn as the
        swap).  Raising makes the reload partially applied.

        A follower whose part applies it elsewhere (worker processes)
        returns a L{Deferred} that fires with what failed there, by name
        (the reload is then partially applied); the answer waits for it.
        """

    def reloadEnded(result: ReloadResult) -> None:
        """
        A reload (not a check) ended with C{result}.
        """


@implementer(IReloadFollower)
class ReloadFollower:
    """
    A follower that does nothing at any step: subclass it and override what
    matters.
    """

    part = "a follower"

    def reloadStarting(self, source: str) -> None:
        pass

    def prepare(self, runtime: Runtime) -> None:
        pass

    def follow(self, runtime: Runtime) -> Deferred[Sequence[str]] | None:
        pass

    def reloadEnded(self, result: ReloadResult) -> None:
        pass


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
    cluster = config.cluster
    if cluster is not None and cluster.secret_file_mode & 0o077:
        warnings.append(
            f"cluster.secret_file: {cluster.secret_file} can be read by group "
            f"or others (mode {cluster.secret_file_mode:04o}): "
            f"chmod 600 {cluster.secret_file}"
        )
    if (
        cluster is not None
        and cluster.redis_password_file
        and cluster.redis_password_file_mode & 0o077
    ):
        warnings.append(
            f"cluster.redis_password_file: {cluster.redis_password_file} can be "
            f"read by group or others (mode {cluster.redis_password_file_mode:04o}): "
            f"chmod 600 {cluster.redis_password_file}"
        )
    return warnings + routeWarnings(config)


class Reloader(Service):
    """
    Applies the config file to the running proxy, one reload at a time, and
    tells its followers (L{IReloadFollower}) each step.  A service only to
    have its place (C{"reloader"}) in the tree: it neither starts nor stops
    anything.
    """

    def __init__(
        self,
        configPath: str,
        holder: RuntimeHolder,
        clock: IReactorTime,
        followers: Iterable[IReloadFollower] = (),
        load: Callable[[str], Config] = loadConfig,
    ) -> None:
        """
        @param followers: told of every reload, in this order.
        """
        self.configPath = configPath
        self.holder = holder
        self._clock = clock
        self._load = load
        self._lock = DeferredLock()
        self.followers = tuple(followers)

    def reload(self, source: str) -> Deferred[ReloadResult]:
        """
        Reload the config file; fires with the result, never fails.

        @param source: who asked (C{"SIGHUP"}, C{"admin"}), for the log.
        """
        return self._lock.run(self._reloadOnce, source)

    def _reloadOnce(self, source: str) -> Deferred[ReloadResult]:
        # The followers are told while the lock is held: releasing it runs
        # the next waiting reload at once, and each reload's start and
        # result must reach them in order (systemd pairs RELOADING=1 with
        # the next READY=1).
        for follower in self.followers:
            try:
                follower.reloadStarting(source)
            except Exception:
                _log.failure("A reload follower ({part}) failed", part=follower.part)

        def ended(result: ReloadResult) -> ReloadResult:
            for follower in self.followers:
                try:
                    follower.reloadEnded(result)
                except Exception:
                    _log.failure(
                        "A reload follower ({part}) failed", part=follower.part
                    )
            return result

        return self._once(source, True).addCallback(ended)

    def check(self) -> Deferred[ReloadResult]:
        """
        Validate the file on disk and say what a reload would change,
        without changing anything.
        """
        return self._lock.run(self._once, "check", False)

    def _once(self, source: str, apply: bool) -> Deferred[ReloadResult]:
        def unexpected(reason: Failure) -> ReloadResult:
            _log.failure(
                "Reload ({source}) failed unexpectedly; nothing was applied",
                reason,
                source=source,
            )
            return Refused("internal", f"internal error: {reason.value}")

        def attempt() -> Deferred[ReloadResult]:
            result = self._attempt(source, apply)
            return result if isinstance(result, Deferred) else succeed(result)

        return maybeDeferred(attempt).addErrback(unexpected)

    def _attempt(
        self, source: str, apply: bool
    ) -> ReloadResult | Deferred[ReloadResult]:
        verb = "Reload" if apply else "Check"
        if not self.configPath:
            return Refused(
                "no_config_file",
                "running without a config file (quick mode): nothing to reload",
                (),
            )
        loaded = self._read(verb, source)
        if isinstance(loaded, Refused):
            return loaded
        config = loaded
        current = self.holder.current
        restart = staticChanges(current.config, config)
        # Static settings keep their running values until a restart.
        effective = attrs.evolve(
            config,
            server=current.config.server,
            acme=current.config.acme,
            cluster=current.config.cluster,
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
        warnings = tuple(configWarnings(config) + list(runtime.tls.warnings))
        if not apply:
            return Applied(
                current.generation,
                config.source_sha256,
                sites,
                tuple(restart),
                warnings,
                wouldBeGeneration=runtime.generation,
            )
        failed, elsewhere = self._swap(source, runtime)
        if elsewhere:
            # Parts that apply it elsewhere (worker processes): the answer
            # waits for them.
            return gatherResults(elsewhere).addCallback(
                lambda more: self._applied(
                    source,
                    runtime,
                    config,
                    sites,
                    restart,
                    warnings,
                    failed + tuple(name for names in more for name in names),
                )
            )
        return self._applied(source, runtime, config, sites, restart, warnings, failed)

    def _applied(
        self,
        source: str,
        runtime: Runtime,
        config: Config,
        sites: SiteChanges,
        restart: list[str],
        warnings: tuple[str, ...],
        failed: tuple[str, ...],
    ) -> Applied:
        """
        Log and answer a reload that swapped C{runtime} in.
        """
        for warning in warnings:
            _log.warn("{problem}", problem=warning)
        _log.info(
            "Reloaded ({source}): generation {generation}, sites +{added} "
            "-{removed} ~{changed} ={unchanged}{restart}{failed}",
            source=source,
            generation=runtime.generation,
            added=len(sites.added),
            removed=len(sites.removed),
            changed=len(sites.changed),
            unchanged=sites.unchanged,
            restart=(
                "; waiting for a restart: " + ", ".join(restart) if restart else ""
            ),
            failed=("; partially applied, failed: " + ", ".join(failed))
            if failed
            else "",
        )
        return Applied(
            runtime.generation,
            config.source_sha256,
            sites,
            tuple(restart),
            warnings,
            failed=failed,
        )

    def _read(self, verb: str, source: str) -> Config | Refused:
        """
        Read, parse and check the config file.
        """
        try:
            config = self._load(self.configPath)
        except ConfigFileError as e:
            _log.error(
                "{verb} ({source}) failed, nothing was applied: {message}",
                verb=verb,
                source=source,
                message=str(e),
            )
            return Refused("config_unreadable", str(e), tuple(e.errors))
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
            return Refused(
                "config_invalid",
                f"{self.configPath} is invalid: " + "; ".join(errors),
                tuple(errors),
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
        return config

    def _swap(
        self, source: str, runtime: Runtime
    ) -> tuple[tuple[str, ...], list[Deferred[Sequence[str]]]]:
        """
        Make C{runtime} current, with its followers.

        @return: the names of the followers that failed after the swap, and
            what the followers that apply it elsewhere will say failed.
        """
        for follower in self.followers:
            follower.prepare(runtime)
        self.holder.current = runtime
        failed = []
        elsewhere: list[Deferred[Sequence[str]]] = []
        for follower in self.followers:
            try:
                later = follower.follow(runtime)
            except Exception:
                _log.failure(
                    "After reload ({source}): a follower ({part}) failed",
                    source=source,
                    part=follower.part,
                )
                failed.append(str(follower.part))
            else:
                if later is not None:
                    elsewhere.append(later.addErrback(self._lost, source, follower))
        return tuple(failed), elsewhere

    def _lost(
        self, reason: Failure, source: str, follower: IReloadFollower
    ) -> Sequence[str]:
        """
        A follower's L{Deferred} failed: its whole part failed.
        """
        _log.failure(
            "After reload ({source}): a follower ({part}) failed",
            reason,
            source=source,
            part=follower.part,
        )
        return [str(follower.part)]

    def _refused(
        self, verb: str, source: str, code: str, what: str, errors: list[str]
    ) -> Refused:
        """
        Log and answer a reload or check refused for C{errors}.
        """
        _log.error(
            "{verb} ({source}) failed, nothing was applied: {errors}",
            verb=verb,
            source=source,
            errors="; ".join(errors),
        )
        return Refused(code, f"{what}: " + "; ".join(errors), tuple(errors))


__all__ = [
    "Applied",
    "IReloadFollower",
    "Refused",
    "ReloadFollower",
    "ReloadResult",
    "Reloader",
    "Runtime",
    "SiteChanges",
    "siteChanges",
    "staticChanges",
]
