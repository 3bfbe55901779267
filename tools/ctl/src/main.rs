use std::process::ExitCode;

fn main() -> ExitCode {
    ve_ctl::cli::main()
}
