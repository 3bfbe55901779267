use std::process::ExitCode;

fn main() -> ExitCode {
    ve_service::main("s3-archiver", ve_s3_archiver::DEFAULTS, ve_s3_archiver::run)
}
