use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("normalizer", ve_normalizer::DEFAULTS, ve_normalizer::run)
}
