//! The cluster's nodes, for the drivers that route between them (`netlet.v1alpha1.Cluster`).
//!
//! ```text
//!  Kubernetes Node events ─┐  (one event: one entry)          ┌─ ProgramNodes delta ─▶ driver
//!  manifests' Node objects ┼─▶ table::Nodes ── generation ──▶ fanout ─ ProgramNodes full ──▶ driver
//!                          │   (entries, owner per name,      │   (a registered driver, or one
//!                          │    a log of changed names)        │    that refused a delta)
//!                          └── convert::node_of (Node → ClusterNode)
//! ```
//!
//! Sources only write the table, one node at a time (a relist replaces one source's entries
//! whole); the table knows nothing of RPC; the fan-out alone talks to drivers, woken by the
//! table's generation, and sends each driver the names changed since the generation it applied
//! (from the table's log), or the whole table when it applied none or the log no longer reaches
//! back that far. So a node joining, leaving or changing is one entry in one message whatever the
//! size of the cluster.

pub mod convert;
pub mod fanout;
pub mod table;

pub use table::Nodes;
