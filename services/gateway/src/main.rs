use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("gateway", ve_gateway::DEFAULTS, ve_gateway::run)
}
