# -*- test-case-name: metaproxy.test.test_clusterinfo -*-
"""
C{RPC_CM_CLUSTER_INFO}: the request every real meta answers with its
cluster's facts (Pegasus C{idl/meta_admin.thrift}:
C{configuration_cluster_info_request {}} and
C{configuration_cluster_info_response {1: error_code err; 2: list<string>
keys; 3: list<string> values}}), and how a metaproxy tells it is one.

Pegasus's own table migrator checks a target with this RPC and takes the
target's C{cluster_name} from it, so metaproxy uses it the same way to
refuse route loops. A real meta answers C{err = ERR_OK} with keys such as
C{meta_servers}, C{primary_meta_server}, C{zookeeper_hosts},
C{zookeeper_root} and C{cluster_name} (a follower answers
C{ERR_FORWARD_TO_OTHERS}). A metaproxy must B{not} answer as a meta would:
it answers C{err = ERR_HANDLER_NOT_FOUND} (a name every client parses; a
final error for the migrator) with the one key L{METAPROXY_KEY}, whose
value describes the proxy. Any checker therefore sees "not a meta", and
metaproxy's own checks can say "another metaproxy".

A metaproxy also marks the query_cfg requests it sends to metas with
L{LOOP_MARKER} in the header's C{client_partition_hash} (a field a meta
ignores for meta RPCs), so that a metaproxy receiving one knows a route of
the sender points at it and refuses it at once
(L{metaproxy.frontend.resolver}).
"""

import attrs

from metaproxy.wire import binary
from metaproxy.wire.binary import DecodeError

CLUSTER_INFO = "RPC_CM_CLUSTER_INFO"

#: The key of a metaproxy's answer.
METAPROXY_KEY = "metaproxy"

#: C{client_partition_hash} of the query_cfg requests a metaproxy sends
#: upstream (the bytes C{"mtprxy\\x00\\x01"}).
LOOP_MARKER = 0x6D7470727879_0001

_STRUCT, _STRING, _LIST = 12, 11, 15

#: The args of a request: field 1, an empty request struct; STOP.
REQUEST_ARGS = bytes((_STRUCT, 0, 1, 0, 0))


@attrs.frozen
class ClusterInfo:
    """A decoded answer: the app-level C{err} and the key/value pairs."""

    err: str
    info: dict = attrs.field(factory=dict)

    @property
    def cluster_name(self):
        """@return: the C{cluster_name} the meta gave, or L{None}."""
        return self.info.get("cluster_name")

    @property
    def is_metaproxy(self):
        """@return: whether the answer came from a metaproxy."""
        return METAPROXY_KEY in self.info


def _string_list(fid, items):
    out = [binary.pack_field(_LIST, fid), binary.pack_list_header(_STRING, len(items))]
    out.extend(binary.pack_string(s) for s in items)
    return b"".join(out)


def encode_result(err, info):
    """
    @param err: the app-level error name.
    @param info: a L{dict} (ordered) of string keys to string values.
    @return: the reply body (the result struct with its C{0c 00 00} wrapper).
    """
    keys = list(info)
    return b"".join(
        (
            binary.pack_field(_STRUCT, 0),
            binary.pack_field(_STRUCT, 1),
            binary.pack_string(err),
            _string_list(2, keys),
            _string_list(3, [str(info[k]) for k in keys]),
            b"\x00\x00",
        )
    )


def metaproxy_result(description):
    """@return: the reply body a metaproxy answers C{RPC_CM_CLUSTER_INFO} with."""
    return encode_result("ERR_HANDLER_NOT_FOUND", {METAPROXY_KEY: description})


def decode_result(body):
    """
    @param body: a reply body (with its C{0c 00 00} wrapper).
    @return: a L{ClusterInfo}.
    @raise DecodeError: if the body is malformed.
    """
    r = binary.Reader(body)
    ttype, fid = r.field()
    if ttype != _STRUCT or fid != 0:
        raise DecodeError("cluster_info answer without a result struct")
    err, keys, values = None, [], []
    while True:
        ttype, fid = r.field()
        if ttype == 0:
            break
        if fid == 1 and ttype == _STRUCT:
            err = r.string()
        elif fid in (2, 3) and ttype == _LIST:
            etype, size = r.list_header()
            if etype != _STRING:
                raise DecodeError("cluster_info keys/values are not strings")
            items = [r.string() for _ in range(size)]
            if fid == 2:
                keys = items
            else:
                values = items
        else:
            r.skip(ttype)
    if err is None:
        raise DecodeError("cluster_info answer without err")
    if len(keys) != len(values):
        raise DecodeError(f"cluster_info answer with {len(keys)} keys and {len(values)} values")
    return ClusterInfo(err, dict(zip(keys, values)))
