use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("enricher", ve_enricher::DEFAULTS, ve_enricher::run)
}
