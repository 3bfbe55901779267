use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main(
        "schema-registry",
        ve_schema_registry::service::DEFAULTS,
        ve_schema_registry::service::run,
    )
}
