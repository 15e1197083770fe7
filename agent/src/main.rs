//! The `taskscope` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use taskscope::{
    agent,
    check::{can_run, run_checks},
    cli::{Cli, Command, LogArgs, LogFormat},
    record,
};

fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The async runtime of `run` and `record` (two workers: the agent is small).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln!("taskscope: cannot start the async runtime: {err}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(&args.log);
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(agent::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err}");
                    eprintln!("taskscope: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Record(args) => {
            init_logging(&args.log);
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(record::run(&args)) {
                Ok(summary) => {
                    println!(
                        "wrote {} ({} context switches, {} dropped; {} processes) and {} ({} spans)",
                        args.output.display(),
                        summary.switches,
                        summary.switches_dropped,
                        summary.processes,
                        summary.spans_output.display(),
                        summary.spans
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("taskscope: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            init_logging(&args.log);
            let requirements = run_checks(&args.kernel.kernel_btf);
            for requirement in &requirements {
                println!("{requirement}");
            }
            if can_run(&requirements) {
                println!("taskscope run can work on this host");
                ExitCode::SUCCESS
            } else {
                println!("taskscope run cannot work on this host: fix the missing required lines");
                ExitCode::FAILURE
            }
        }
    }
}
