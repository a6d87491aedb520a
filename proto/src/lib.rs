//! blufio's wire contracts: the control-plane gRPC API (`blufio.control.v1`) and the conventions
//! that the daemon and its clients must agree on, such as where the control socket lives.
//!
//! This crate holds no behaviour of the daemon: `blufioctl` depends on it and never on `blufiod`.

pub mod backup;
pub mod descriptors;
pub mod httpsig;
pub mod paths;

/// The `blufio.control.v1` package, generated from `proto/blufio/control/v1/control.proto`.
pub mod control {
    pub mod v1 {
        #![allow(clippy::all, missing_docs, reason = "generated code")]
        tonic::include_proto!("blufio.control.v1");

        /// Encoded `FileDescriptorSet` of the package, for gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("blufio_control_v1_descriptor");

        /// Fully qualified name of the control service, as used by the health service.
        pub const SERVICE_NAME: &str = "blufio.control.v1.Control";
    }
}

/// The gRPC `:authority` that clients must send over the Unix socket. A socket path is not a
/// valid HTTP/2 authority, and hyper's server rejects streams that use one.
pub const UNIX_SOCKET_AUTHORITY: &str = "localhost";
