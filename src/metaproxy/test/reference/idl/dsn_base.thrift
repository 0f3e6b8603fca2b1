// rDSN base types. Empty here, as in Pegasus's own IDL: their values are
// written by hand-written code (bare values, see ../gen/dsn_base/ttypes.py), which is
// what makes them unreadable by spec-driven thrift codecs.
namespace py dsn_base

struct gpid {}
struct rpc_address {}
struct error_code {}
struct host_port {}
struct blob {}
