//! Stock gRPC tooling against the control socket: Python's grpcio (the reference C-core client)
//! over the Unix socket with the `localhost` authority, using the standard health service and
//! server reflection to call `GetStatus` without any generated blufio code, as grpcurl does.
//!
//! Needs Python 3 with `grpcio`, `grpcio-health-checking` and `grpcio-reflection`; `cargo xtask
//! test` installs them into a venv and points `BLUFIOTEST_PYTHON` at it.

use blufio_testkit as support;

use std::process::Command;

use support::{Daemon, describe};

/// The invocation documented in the README, extended to decode a reply through reflection.
const CLIENT: &str = r#"
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf import message_factory

channel = grpc.insecure_channel("unix:" + sys.argv[1], options=[("grpc.default_authority", "localhost")])

health = health_pb2_grpc.HealthStub(channel)
reply = health.Check(health_pb2.HealthCheckRequest(service="blufio.control.v1.Control"), timeout=10)
print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
for response in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10):
    for service in response.list_services_response.service:
        print("service", service.name)

pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("blufio.control.v1.GetStatusRequest"))
response_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("blufio.control.v1.GetStatusResponse"))
get_status = channel.unary_unary(
    "/blufio.control.v1.Control/GetStatus",
    request_serializer=lambda message: message.SerializeToString(),
    response_deserializer=response_type.FromString,
)
status = get_status(request_type(), timeout=10)
print("pid", status.pid)
print("state", pool.FindEnumTypeByName("blufio.control.v1.DaemonState").values_by_number[status.state].name)
"#;

#[test]
fn python_grpcio_reaches_health_reflection_and_the_control_service() {
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python)
        .args(["-c", "import grpc, grpc_health, grpc_reflection"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}; run the tests with `cargo xtask test`"));
    assert!(
        probe.status.success(),
        "{python} lacks grpcio, grpcio-health-checking or grpcio-reflection; run the tests with `cargo xtask test`, which installs them:\n{}",
        describe(&probe)
    );

    let daemon = Daemon::start();
    let output = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"health SERVING"), "{stdout}");
    for service in [
        "blufio.control.v1.Control",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            lines.contains(&format!("service {service}").as_str()),
            "{service} not listed: {stdout}"
        );
    }
    assert!(
        lines.contains(&format!("pid {}", daemon.pid().as_raw()).as_str()),
        "{stdout}"
    );
    assert!(lines.contains(&"state DAEMON_STATE_READY"), "{stdout}");
}
