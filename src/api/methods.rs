//! Every method jobd serves, by its HTTP/2 path, and its name as metrics and spans carry it.

use super::auth::METHODS;

/// The methods jobd serves beside its own (`auth::METHODS`): health and reflection.
const OTHER_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What OpenTelemetry's RPC conventions name a method that is not known.
pub const OTHER: &str = "_OTHER";

/// The method at `path` as `rpc.method` has it ("jobd.v1.JobService/SubmitJob"), or `_OTHER`
/// for a path jobd does not serve: a caller's made-up paths must not make a series each.
pub fn rpc_method(path: &str) -> &'static str {
    METHODS
        .iter()
        .map(|(known, _)| *known)
        .chain(OTHER_SERVICES.iter().copied())
        .find(|known| *known == path)
        .and_then(|known| known.strip_prefix('/'))
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_named_and_the_rest_are_other() {
        assert_eq!(
            rpc_method("/jobd.v1.JobService/SubmitJob"),
            "jobd.v1.JobService/SubmitJob"
        );
        assert_eq!(
            rpc_method("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(rpc_method("/jobd.v1.JobService/Nope"), OTHER);
        assert_eq!(rpc_method("jobd.v1.JobService/SubmitJob"), OTHER);
    }
}
