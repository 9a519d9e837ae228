//! The `kenning` binary: see `kenning --help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    quiet_when_the_reader_goes_away();
    match kenning::cli::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Stopped with Ctrl-C (and saved): the status a shell gives an interrupted command.
            let stopped = e.chain().any(|c| matches!(c.downcast_ref(), Some(kenning::finetune::FinetuneError::TrainerStopped)));
            if stopped { ExitCode::from(130) } else { ExitCode::FAILURE }
        }
    }
}

/// `kenning search … | head`: when whatever reads the output closes it early, printing fails and
/// the output simply ends there, as for any command in a pipe (exit status 141, as a process
/// stopped by SIGPIPE), instead of a panic and its backtrace. SIGPIPE itself stays ignored: a
/// closed socket to a model server is an error the code handles, not the end of the process.
fn quiet_when_the_reader_goes_away() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
