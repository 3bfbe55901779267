use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("invoicer", ve_invoicer::DEFAULTS, ve_invoicer::run)
}
