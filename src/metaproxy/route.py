# -*- test-case-name: metaproxy.test.test_route -*-
"""
The value a route source yields for a table: which cluster, which metas.
"""

import ipaddress
import json

import attrs

from metaproxy.errors import InvalidRoute


def parse_host_port(text):
    """
    Parse one C{host:port} meta address.

    @param text: e.g. C{"10.0.0.1:34601"} or C{"meta1.example:34601"};
        surrounding white space is ignored.
    @return: C{(host, port)} with C{host} a L{str} and C{port} an L{int}.
    @raise ValueError: with a message saying what is wrong.
    """
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") or ":" in host:
        raise ValueError(f"{text!r}: IPv6 meta addresses are not supported by Pegasus")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be 1..65535")
    if any(c.isspace() for c in host):
        raise ValueError(f"{text!r}: host contains white space")
    return host.lower(), int(port)


@attrs.frozen(order=True)
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
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRoute(f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise InvalidRoute("expected a JSON object")
        name = obj.get("cluster_name")
        addrs = obj.get("meta_addrs")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRoute("cluster_name missing or not a non-empty string")
        if not isinstance(addrs, (str, list)):
            raise InvalidRoute("meta_addrs missing or not a string")
        try:
            meta = MetaAddrs.parse(addrs)
        except (ValueError, TypeError, AttributeError) as e:
            raise InvalidRoute(f"meta_addrs: {e}") from None
        return cls(name.strip(), meta)

    def to_json(self):
        """@return: the node format as L{bytes} (inverse of L{from_json})."""
        return json.dumps(
            {"cluster_name": self.cluster_name, "meta_addrs": str(self.meta_addrs)}
        ).encode()
