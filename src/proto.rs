//! The code generated from `proto/` by build.rs (protox + tonic-prost-build): the gRPC service's
//! messages, server and client, and its descriptor set. A room of its own, so the service
//! (`grpc.rs`) and the scenario's repro plan (`scenarios/worker_pool.rs`) both use it without
//! importing each other.

/// `chokepoint.worker.v1` (`proto/chokepoint/worker/v1/worker.proto`).
pub mod worker {
    tonic::include_proto!("chokepoint.worker.v1");
    /// The encoded descriptor set, served by reflection.
    pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/worker_descriptor.bin"));
    /// The service's full name.
    pub const SERVICE: &str = "chokepoint.worker.v1.WorkerPool";
    /// The `Work` method's path, as a client sends it.
    pub const WORK_PATH: &str = "/chokepoint.worker.v1.WorkerPool/Work";
}
