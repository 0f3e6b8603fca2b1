# -*- test-case-name: metaproxy.test.test_wire_codes -*-
"""
rDSN error-code names, as they travel on the wire (thrift strings).

Clients parse these strings into enums: Java throws on a name it does not
know (and closes the channel), Go stops reading the connection, Python raises
inside C{dataReceived}. So metaproxy only ever sends names from
L{CLIENT_SAFE}: the enum of the oldest supported client, Java 1.7.1
(C{com.xiaomi.infra.pegasus.base.error_code.error_types}). Java 1.7.1 to
1.8.0 do not know 11 names of the rDSN list up to
C{ERR_ZOOKEEPER_OPERATION} (a real meta answers C{ERR_UNDER_RECOVERY} while
it recovers, and Java 1.8.0 then throws C{No enum constant}); those are
replaced by the nearest name every client knows (L{CLIENT_MAPPING},
documented in C{docs/clients.rst}).
"""

# The rDSN order up to ERR_ZOOKEEPER_OPERATION (Java 1.11.x, Go's oldest list).
_RDSN_CODES_TO_ZOOKEEPER = """
ERR_OK ERR_UNKNOWN ERR_SERVICE_NOT_FOUND ERR_SERVICE_ALREADY_RUNNING ERR_IO_PENDING
ERR_TIMEOUT ERR_SERVICE_NOT_ACTIVE ERR_BUSY ERR_NETWORK_INIT_FAILED ERR_FORWARD_TO_OTHERS
ERR_OBJECT_NOT_FOUND ERR_HANDLER_NOT_FOUND ERR_LEARN_FILE_FAILED ERR_GET_LEARN_STATE_FAILED
ERR_INVALID_VERSION ERR_INVALID_PARAMETERS ERR_CAPACITY_EXCEEDED ERR_INVALID_STATE
ERR_INACTIVE_STATE ERR_NOT_ENOUGH_MEMBER ERR_FILE_OPERATION_FAILED ERR_HANDLE_EOF
ERR_WRONG_CHECKSUM ERR_INVALID_DATA ERR_INVALID_HANDLE ERR_INCOMPLETE_DATA
ERR_VERSION_OUTDATED ERR_PATH_NOT_FOUND ERR_PATH_ALREADY_EXIST ERR_ADDRESS_ALREADY_USED
ERR_STATE_FREEZED ERR_LOCAL_APP_FAILURE ERR_BIND_IOCP_FAILED ERR_NETWORK_START_FAILED
ERR_NOT_IMPLEMENTED ERR_CHECKPOINT_FAILED ERR_WRONG_TIMING ERR_NO_NEED_OPERATE
ERR_CORRUPTION ERR_TRY_AGAIN ERR_CLUSTER_NOT_FOUND ERR_CLUSTER_ALREADY_EXIST
ERR_SERVICE_ALREADY_EXIST ERR_INJECTED ERR_REPLICATION_FAILURE ERR_APP_EXIST
ERR_APP_NOT_EXIST ERR_BUSY_CREATING ERR_BUSY_DROPPING ERR_NETWORK_FAILURE
ERR_UNDER_RECOVERY ERR_LEARNER_NOT_FOUND ERR_OPERATION_DISABLED ERR_EXPIRED
ERR_LOCK_ALREADY_EXIST ERR_HOLD_BY_OTHERS ERR_RECURSIVE_LOCK ERR_NO_OWNER
ERR_NODE_ALREADY_EXIST ERR_INCONSISTENT_STATE ERR_ARRAY_INDEX_OUT_OF_RANGE
ERR_DIR_NOT_EMPTY ERR_FS_INTERNAL ERR_IGNORE_BAD_DATA ERR_APP_DROPPED
ERR_MOCK_INTERNAL ERR_ZOOKEEPER_OPERATION
""".split()

#: Names of that list Java 1.7.1-1.8.0 cannot parse, and what is sent
#: instead: a retryable error for a passing state, the nearest final error
#: otherwise.
CLIENT_MAPPING = {
    # A meta recovering its state: the same as "not active yet", retried.
    "ERR_UNDER_RECOVERY": "ERR_SERVICE_NOT_ACTIVE",
    # A transient network problem between servers: retried.
    "ERR_NETWORK_FAILURE": "ERR_SERVICE_NOT_ACTIVE",
    # The table was dropped: what a meta says of a table it does not have.
    "ERR_APP_DROPPED": "ERR_OBJECT_NOT_FOUND",
    "ERR_SERVICE_ALREADY_EXIST": "ERR_SERVICE_ALREADY_RUNNING",
    "ERR_DIR_NOT_EMPTY": "ERR_FILE_OPERATION_FAILED",
    "ERR_FS_INTERNAL": "ERR_FILE_OPERATION_FAILED",
    "ERR_IGNORE_BAD_DATA": "ERR_INVALID_DATA",
    "ERR_OPERATION_DISABLED": "ERR_UNKNOWN",
    "ERR_LEARNER_NOT_FOUND": "ERR_UNKNOWN",
    "ERR_INJECTED": "ERR_UNKNOWN",
    "ERR_MOCK_INTERNAL": "ERR_UNKNOWN",
}

#: Every error name that every supported Pegasus client (Java 1.7.1
#: included) can parse.
CLIENT_SAFE = frozenset(_RDSN_CODES_TO_ZOOKEEPER) - frozenset(CLIENT_MAPPING)

ERR_OK = "ERR_OK"
ERR_UNKNOWN = "ERR_UNKNOWN"
ERR_TIMEOUT = "ERR_TIMEOUT"
ERR_SERVICE_NOT_ACTIVE = "ERR_SERVICE_NOT_ACTIVE"
ERR_BUSY = "ERR_BUSY"
ERR_FORWARD_TO_OTHERS = "ERR_FORWARD_TO_OTHERS"
ERR_OBJECT_NOT_FOUND = "ERR_OBJECT_NOT_FOUND"
ERR_HANDLER_NOT_FOUND = "ERR_HANDLER_NOT_FOUND"
ERR_INVALID_PARAMETERS = "ERR_INVALID_PARAMETERS"
ERR_INVALID_DATA = "ERR_INVALID_DATA"
ERR_BUSY_CREATING = "ERR_BUSY_CREATING"
ERR_BUSY_DROPPING = "ERR_BUSY_DROPPING"
ERR_UNDER_RECOVERY = "ERR_UNDER_RECOVERY"

#: The rpc-level error names metaproxy itself may put in a reply header.
RPC_LEVEL_SAFE = frozenset(
    {
        ERR_OK,
        ERR_HANDLER_NOT_FOUND,
        ERR_TIMEOUT,
        ERR_SERVICE_NOT_ACTIVE,
        ERR_BUSY,
        ERR_INVALID_PARAMETERS,
        ERR_INVALID_DATA,
        ERR_UNKNOWN,
    }
)


def client_safe(name, fallback=ERR_UNKNOWN):
    """
    @param name: an error name received from a backend.
    @return: C{name} if every client can parse it; else its replacement
        from L{CLIENT_MAPPING}; else C{fallback}.
    """
    if name in CLIENT_SAFE:
        return name
    return CLIENT_MAPPING.get(name, fallback)
