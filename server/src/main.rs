//! The `kenning` binary: see `kenning --help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match kenning::cli::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
