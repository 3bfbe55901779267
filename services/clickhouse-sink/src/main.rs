use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main(
        "clickhouse-sink",
        ve_clickhouse_sink::DEFAULTS,
        ve_clickhouse_sink::run,
    )
}
