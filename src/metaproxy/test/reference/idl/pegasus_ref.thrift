// Reference IDL for the structs metaproxy encodes by hand, written from the
// facts in shared/docs/pegasus-protocol.md sections 2, 4 and 6. The tests
// check metaproxy's codec byte-for-byte against thrift code generated from it.
include "dsn_base.thrift"

namespace py pegasus_ref

struct query_cfg_request {
  1: string app_name;
  2: list<i32> partition_indices;
}

// As Pegasus master writes it: fields 9-11 are new (2024).
struct partition_configuration {
  1: dsn_base.gpid pid;
  2: i64 ballot;
  3: i32 max_replica_count;
  4: dsn_base.rpc_address primary;
  5: list<dsn_base.rpc_address> secondaries;
  6: list<dsn_base.rpc_address> last_drops;
  7: i64 last_committed_decree;
  8: i32 partition_flags;
  9: optional dsn_base.host_port hp_primary;
  10: optional list<dsn_base.host_port> hp_secondaries;
  11: optional list<dsn_base.host_port> hp_last_drops;
}

struct query_cfg_response {
  1: dsn_base.error_code err;
  2: i32 app_id;
  3: i32 partition_count;
  4: bool is_stateful;
  5: list<partition_configuration> partitions;
}

// As every client generated before 2024 knows it: no fields 9-11.
struct old_partition_configuration {
  1: dsn_base.gpid pid;
  2: i64 ballot;
  3: i32 max_replica_count;
  4: dsn_base.rpc_address primary;
  5: list<dsn_base.rpc_address> secondaries;
  6: list<dsn_base.rpc_address> last_drops;
  7: i64 last_committed_decree;
  8: i32 partition_flags;
}

struct old_query_cfg_response {
  1: dsn_base.error_code err;
  2: i32 app_id;
  3: i32 partition_count;
  4: bool is_stateful;
  5: list<old_partition_configuration> partitions;
}

struct request_meta {
  1: optional i32 app_id;
  2: optional i32 partition_index;
  3: optional i32 client_timeout;
  4: optional i64 client_partition_hash;
  5: optional bool is_backup_request;
}

enum negotiation_status {
  INVALID = 0,
  SASL_LIST_MECHANISMS = 1,
  SASL_LIST_MECHANISMS_RESP = 2,
  SASL_SELECT_MECHANISMS = 3,
  SASL_SELECT_MECHANISMS_RESP = 4,
  SASL_INITIATE = 5,
  SASL_CHALLENGE = 6,
  SASL_CHALLENGE_RESP = 7,
  SASL_SUCC = 8,
  SASL_AUTH_DISABLE = 9,
  SASL_AUTH_FAIL = 10
}

struct negotiation_response {
  1: negotiation_status status;
  2: dsn_base.blob msg;
}

service meta {
  query_cfg_response query_cfg(1: query_cfg_request query);
  old_query_cfg_response old_query_cfg(1: query_cfg_request query);
  negotiation_response negotiate(1: negotiation_response ignored);
}
