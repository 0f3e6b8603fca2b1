# -*- test-case-name: metaproxy.test.test_sim -*-
"""
The tables of a simulated Pegasus cluster and the query_cfg answers they give.

The layout follows a Pegasus onebox's C{app temp -d}: three replica servers,
every partition on all three, one primary and two secondaries, primaries
spread round-robin over the servers. Each table's full answer is encoded
once and re-encoded only when the table changes, so a benchmark measures the
proxy, not the simulator.
"""

from typing import Optional
import attrs

from metaproxy.wire import codes, querycfg
from metaproxy.wire.querycfg import HostPort, PartitionConfig, QueryCfgResponse

#: The replica servers of a onebox.
DEFAULT_REPLICAS = (("127.0.0.1", 34801), ("127.0.0.1", 34802), ("127.0.0.1", 34803))

_NOT_FOUND = querycfg.error_result(codes.ERR_OBJECT_NOT_FOUND)


def is_power_of_two(n):
    """@return: L{True} for 1, 2, 4, 8, ..."""
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def select_partitions(partitions, partition_indices):
    """
    Pick what a meta server returns for C{partition_indices}: the requested
    indices that are in range, in the order asked (repeats included); all
    partitions when none is valid or none was asked for.

    @param partitions: the table's partitions, by index.
    @param partition_indices: the indices from the request.
    @return: a L{tuple} of partitions.
    """
    n = len(partitions)
    chosen = tuple(partitions[i] for i in partition_indices if 0 <= i < n)
    return chosen or tuple(partitions)


@attrs.define(eq=False)
class SimTable:
    """
    One table: its id, its partitions and the encoded full answer.

    @ivar ballots: each partition's ballot; they grow on every change.
    @ivar primaries: each partition's primary, as an index into the
        model's replica servers.
    """

    name: str
    app_id: int
    partition_count: int
    ballots: list
    primaries: list
    decree: int = 0
    _body: Optional[bytes] = attrs.field(init=False, default=None)

    def changed(self):
        """Forget the encoded answer (call after any change)."""
        self._body = None


@attrs.define(eq=False)
class SimModel:
    """
    The tables of one simulated cluster.

    @ivar replicas: the C{(ip, port)} replica servers the partitions live on.
    @ivar replica_count: replicas per partition (at most C{len(replicas)}).
    @ivar host_ports: also send the C{hp_*} fields (ids 9-11), as Pegasus
        master does; old clients cannot parse those.
    @ivar encodes: how many full answers were encoded (for tests of the
        cache).
    """

    replicas: tuple = DEFAULT_REPLICAS
    replica_count: int = 3
    host_ports: bool = False
    encodes: int = attrs.field(init=False, default=0)
    _tables: dict = attrs.field(init=False, factory=dict)
    _next_app_id: int = attrs.field(init=False, default=1)

    def tables(self):
        """@return: a L{dict} of L{SimTable} by name (a copy)."""
        return dict(self._tables)

    def create_table(self, name, partition_count, app_id=None):
        """
        Add a table, or replace one of the same name.

        @param partition_count: a power of two.
        @param app_id: the id, or L{None} for the next free one (1, 2, ...).
        @return: the L{SimTable}.
        @raise ValueError: if C{partition_count} is not a power of two.
        """
        if not is_power_of_two(partition_count):
            raise ValueError(f"partition count {partition_count!r} is not a power of two")
        if app_id is None:
            app_id = self._next_app_id
        self._next_app_id = max(self._next_app_id, app_id + 1)
        r = len(self.replicas)
        table = SimTable(
            name,
            app_id,
            partition_count,
            ballots=[3] * partition_count,
            primaries=[i % r for i in range(partition_count)],
        )
        self._tables[name] = table
        return table

    def drop_table(self, name):
        """Remove a table; queries for it then get C{ERR_OBJECT_NOT_FOUND}."""
        self._tables.pop(name, None)

    def set_partition_count(self, name, partition_count):
        """
        Change a table's partition count (a power of two), as a split or a
        rebuilt cluster would; every ballot grows.

        @raise KeyError: for an unknown table. @raise ValueError: as
            L{create_table}.
        """
        if not is_power_of_two(partition_count):
            raise ValueError(f"partition count {partition_count!r} is not a power of two")
        table = self._tables[name]
        r = len(self.replicas)
        ballot = max(table.ballots) + 1
        table.partition_count = partition_count
        table.ballots = [ballot] * partition_count
        table.primaries = [i % r for i in range(partition_count)]
        table.changed()

    def move_primary(self, name, partition_index):
        """
        Fail a partition's primary over to its next replica (ballot + 1), as
        a replica server restart would.
        """
        table = self._tables[name]
        table.primaries[partition_index] = (table.primaries[partition_index] + 1) % len(
            self.replicas
        )
        table.ballots[partition_index] += 1
        table.changed()

    def partitions(self, name):
        """@return: the table's L{PartitionConfig}s, by index."""
        table = self._tables[name]
        return tuple(self._partition(table, i) for i in range(table.partition_count))

    def _partition(self, table, index):
        r = len(self.replicas)
        first = table.primaries[index]
        chosen = [self.replicas[(first + k) % r] for k in range(min(self.replica_count, r))]
        primary, secondaries = chosen[0], chosen[1:]
        pc = PartitionConfig(
            app_id=table.app_id,
            partition_index=index,
            ballot=table.ballots[index],
            max_replica_count=self.replica_count,
            primary=querycfg.rpc_address(*primary),
            secondaries=tuple(querycfg.rpc_address(*s) for s in secondaries),
            last_committed_decree=table.decree,
        )
        if self.host_ports:
            pc = attrs.evolve(
                pc,
                hp_primary=HostPort(*primary),
                hp_secondaries=tuple(HostPort(*s) for s in secondaries),
                hp_last_drops=(),
            )
        return pc

    def _response(self, table, partitions):
        return QueryCfgResponse(
            codes.ERR_OK, table.app_id, table.partition_count, True, partitions
        )

    def query_body(self, name, partition_indices=()):
        """
        Answer a leader's query_cfg.

        @return: the reply body (result wrapper included): the table's
            configuration, or C{ERR_OBJECT_NOT_FOUND} for an unknown table.
        """
        table = self._tables.get(name)
        if table is None:
            return _NOT_FOUND
        if partition_indices:
            n = table.partition_count
            if any(0 <= i < n for i in partition_indices):
                parts = self.partitions(name)
                return querycfg.encode_result(
                    self._response(table, select_partitions(parts, partition_indices))
                )
        body = table._body
        if body is None:
            self.encodes += 1
            body = table._body = querycfg.encode_result(
                self._response(table, self.partitions(name))
            )
        return body
