//! The `taskscope` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use taskscope::{
    agent,
    check::run_checks,
    cli::{Command, LogArgs},
    config::{self, ParseFailure, Parsed},
    logging, record, top,
};

/// Logging of the short-lived commands (record, check): the agent's setup, default limit.
fn init_logging(args: &LogArgs) {
    let _ = logging::init(args, 20);
}

fn run(config: config::RunConfig) -> ExitCode {
    let log = logging::init(&config.args.log, config.args.log_rate_limit);
    let fail = |err: agent::RunError| {
        tracing::error!("{err}");
        eprintln!("taskscope: {err}");
        ExitCode::from(err.exit_code())
    };
    // Before the runtime's threads exist: they inherit the capabilities left after it.
    let prepared = match agent::prepare(&config.args) {
        Ok(prepared) => prepared,
        Err(err) => return fail(err),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(agent::run(config, log, prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
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

/// Exit code of a configuration the agent cannot start with (as clap's own usage errors).
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match config::parse(std::env::args_os().collect()) {
        Ok(Parsed::Run(config)) => return run(*config),
        Ok(Parsed::Other(cli)) => cli,
        Err(ParseFailure::Cli(err)) => err.exit(),
        Err(ParseFailure::Config(err)) => {
            eprintln!("taskscope: {err}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    match cli.command {
        // `config::parse` answers `run` itself (with its config file).
        Command::Run(_) => ExitCode::FAILURE,
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
        Command::Top(args) => match top::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("taskscope top: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => {
            init_logging(&args.log);
            let report = run_checks(&args.kernel.kernel_btf);
            for requirement in report.requirements() {
                println!("{requirement}");
            }
            let verdict = report.verdict();
            println!("{}", verdict.line());
            ExitCode::from(verdict.exit_code())
        }
    }
}
