use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("query-api", ve_query_api::DEFAULTS, ve_query_api::run)
}
