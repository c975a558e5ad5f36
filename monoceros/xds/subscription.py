"""What a client has asked for, per type per stream (XDS_PROTOCOL R14-R17)."""

from __future__ import annotations

from collections.abc import Iterable

WILDCARD = "*"


class Subscription:
    """Wildcard and/or named interest in resources of one type.

    ``explicit`` remembers whether the client ever named a resource (or
    ``"*"``): until it has, an empty request means "everything" (the legacy
    wildcard); after it has, an empty request means "nothing" (R15).
    """

    __slots__ = ("wildcard", "names", "explicit")

    def __init__(self) -> None:
        self.wildcard = False
        self.names: set[str] = set()
        self.explicit = False

    def interested(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def set_sotw(self, resource_names: Iterable[str]) -> tuple[set[str], set[str]]:
        """Apply a SotW request's full list; return (names added, names dropped).

        A SotW request always carries the whole remaining list (R16).
        """
        requested = set(resource_names)
        before = set(self.names)
        if requested:
            self.explicit = True
            self.wildcard = WILDCARD in requested
            self.names = requested - {WILDCARD}
        elif not self.explicit:
            self.wildcard = True
            self.names = set()
        else:
            self.wildcard = False
            self.names = set()
        return self.names - before, before - self.names

    def change_delta(
        self, subscribe: Iterable[str], unsubscribe: Iterable[str], first: bool
    ) -> tuple[set[str], set[str]]:
        """Apply a delta request; return (names subscribed, names dropped).

        The first request of a stream with nothing to subscribe is the legacy
        wildcard, which is how Envoy asks for LDS and CDS (R15, R33).
        """
        subscribe = set(subscribe)
        unsubscribe = set(unsubscribe)
        if subscribe:
            self.explicit = True
        elif first and not unsubscribe:
            self.wildcard = True

        if WILDCARD in subscribe:
            self.wildcard = True
        if WILDCARD in unsubscribe:
            self.wildcard = False
        added = subscribe - {WILDCARD}
        dropped = (unsubscribe - {WILDCARD}) & self.names
        self.names |= added
        self.names -= dropped
        return added, dropped
