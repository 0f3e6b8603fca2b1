# -*- test-case-name: metaproxy.test.test_route -*-
"""
The value a route source yields for a table: which cluster, which metas.
"""

import ipaddress
import json
import socket

import attrs
from twisted.logger import Logger

from metaproxy.errors import InvalidRoute

#: The longest table name metaproxy looks up: a Pegasus meta sets no
#: length of its own in query_cfg (an unknown name, however long, is
#: ERR_OBJECT_NOT_FOUND), so longer names get that same answer without a
#: lookup, and nothing keyed by them is kept.
MAX_TABLE_NAME = 1024

log = Logger()


def host_port_problem(text):
    """
    @param text: one C{host:port} meta address (surrounding white space is
        ignored).
    @return: what is wrong with it, without repeating it (node data may
        hold secrets), or L{None} if it is a valid address.
    """
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        return "is not host:port"
    if host.startswith("[") or ":" in host:
        return "is IPv6, which Pegasus does not support"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "port must be 1..65535"
    if any(c.isspace() for c in host):
        return "host contains white space"
    return None


def parse_host_port(text):
    """
    Parse one C{host:port} meta address.

    @param text: e.g. C{"10.0.0.1:34601"} or C{"meta1.example:34601"};
        surrounding white space is ignored.
    @return: C{(host, port)} with C{host} a L{str} and C{port} an L{int}.
    @raise ValueError: with a message saying what is wrong.
    """
    text = text.strip()
    problem = host_port_problem(text)
    if problem is not None:
        if problem == "is not host:port":
            raise ValueError(f"{text!r} is not host:port")
        if problem.startswith("is IPv6"):
            raise ValueError(f"{text!r}: IPv6 meta addresses are not supported by Pegasus")
        raise ValueError(f"{text!r}: {problem}")
    host, _, port = text.rpartition(":")
    return host.lower(), int(port)


@attrs.frozen(order=True, cache_hash=True)
class MetaAddrs:
    """
    A normalised set of meta server addresses: sorted, de-duplicated,
    lower-cased hosts. Two lists naming the same metas in another order, or
    with other white space, are equal and hash alike (one pool per cluster).
    """

    addrs: tuple = attrs.field()

    @classmethod
    def parse(cls, text_or_list):
        """
        @param text_or_list: C{"h1:p1, h2:p2"} or a list of C{"h:p"}.
        @return: a L{MetaAddrs} with at least one address.
        @raise ValueError: naming the first bad address, or if empty.
        """
        if isinstance(text_or_list, str):
            items = [p for p in text_or_list.split(",") if p.strip()]
        else:
            items = list(text_or_list)
        if not items:
            raise ValueError("no meta address given")
        return cls(tuple(sorted({parse_host_port(i) for i in items})))

    def __str__(self):
        return ",".join(f"{h}:{p}" for h, p in self.addrs)

    def strings(self):
        """@return: a L{list} of C{"host:port"} strings, in order."""
        return [f"{h}:{p}" for h, p in self.addrs]


def is_ip_literal(host):
    """@return: L{True} if C{host} is an IPv4 literal such as C{"10.0.0.1"}."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@attrs.frozen
class Route:
    """
    A table's owner: the cluster's name and its meta servers.
    """

    cluster_name: str
    meta_addrs: MetaAddrs

    @classmethod
    def from_json(cls, data):
        """
        Decode the ZooKeeper node format shared with the Go meta-proxy and
        admin-cli's table migrator:
        C{{"cluster_name": "...", "meta_addrs": "h1:p1,h2:p2"}}.

        @param data: the node's bytes.
        @return: a L{Route}.
        @raise InvalidRoute: saying what is wrong with the data.
        """
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError as e:
            raise InvalidRoute(f"not UTF-8 at byte {e.start}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            # Position and json's fixed message only: never the content.
            raise InvalidRoute(f"invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        except (ValueError, RecursionError):
            raise InvalidRoute("invalid JSON") from None
        if not isinstance(obj, dict):
            raise InvalidRoute("expected a JSON object")
        name = obj.get("cluster_name")
        addrs = obj.get("meta_addrs")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRoute("cluster_name missing or not a non-empty string")
        if not isinstance(addrs, (str, list)):
            raise InvalidRoute("meta_addrs missing or not a string")
        items = [p for p in addrs.split(",") if p.strip()] if isinstance(addrs, str) else addrs
        if not items:
            raise InvalidRoute("meta_addrs: no meta address given")
        for i, item in enumerate(items, 1):
            problem = host_port_problem(item) if isinstance(item, str) else "is not a string"
            if problem is not None:
                raise InvalidRoute(f"meta_addrs: address {i} of {len(items)} {problem}")
        return cls(name.strip(), MetaAddrs.parse(items))

    def to_json(self):
        """@return: the node format as L{bytes} (inverse of L{from_json})."""
        return json.dumps(
            {"cluster_name": self.cluster_name, "meta_addrs": str(self.meta_addrs)}
        ).encode()


def is_local_address(host):
    """
    @param host: an IPv4 literal.
    @return: whether C{host} is one of this machine's addresses (all of
        127.0.0.0/8, or any address a socket can be bound to: one system
        call, it never waits on the network).
    """
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    if ip.is_unspecified:
        return True
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
    except OSError:
        return False
    finally:
        s.close()
    return True


@attrs.define(eq=False)
class SelfAddresses:
    """
    The proxy's own client listening addresses, so that a route pointing
    at the proxy itself (a VIP, a copy-paste) is refused instead of being
    queried once per deadline for ever.

    Only IPv4 literals and C{localhost} are recognised (resolving other
    host names would wait on DNS). A listener bound to C{0.0.0.0} (or all
    interfaces) owns the port on every local address.

    @ivar is_local: C{callable(ip) -> bool}, L{is_local_address} by default.
    """

    is_local: object = is_local_address
    _listening: list = attrs.field(init=False, factory=list)
    _memo: dict = attrs.field(init=False, factory=dict)

    def add(self, interface, port):
        """
        Record one listening address.

        @param interface: the bound address; C{""}, C{"0.0.0.0"} or
            C{"::"} for all interfaces.
        @param port: the bound port.
        """
        wildcard = interface in ("", "0.0.0.0", "::")
        self._listening.append(("0.0.0.0" if wildcard else interface, int(port)))
        self._memo.clear()

    def _is_self(self, host, port):
        if host == "localhost":
            host = "127.0.0.1"
        if not is_ip_literal(host):
            return False
        for interface, listening in self._listening:
            if port != listening:
                continue
            if interface == "0.0.0.0":
                if self.is_local(host):
                    return True
            elif host == interface:
                return True
        return False

    def problem(self, meta_addrs):
        """
        @param meta_addrs: a L{MetaAddrs}.
        @return: why a route with these metas is refused (it names one of
            the proxy's own addresses), or L{None}. The first refusal of
            each address set is logged as a warning.
        """
        if not self._listening:
            return None
        try:
            return self._memo[meta_addrs]
        except KeyError:
            pass
        problem = None
        for host, port in meta_addrs.addrs:
            if self._is_self(host, port):
                problem = f"meta {host}:{port} is this proxy's own listening address (a self-loop)"
                log.warn("refusing route to {meta_addrs}: {problem}", meta_addrs=str(meta_addrs), problem=problem)
                break
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[meta_addrs] = problem
        return problem
