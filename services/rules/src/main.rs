use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("rules", ve_rules::DEFAULTS, ve_rules::run)
}
