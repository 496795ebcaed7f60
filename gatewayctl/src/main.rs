//! `gatewayctl`: the admin CLI. Offline policy commands (`policy check|explain|compile|
//! nft|schema`) and remote commands against a controller's Admin gRPC API (`apply`,
//! `get`, `list`, `create`, `update`, `delete`, `explain`, `events`, `audit`, `agents`,
//! `enroll-token`, `keys`, `revoke-agent`, `login`, `logout`, `passwd`, `users`,
//! `whoami`, `diff`, `export`), `config` for the contexts of the configuration file, and
//! `completions SHELL` and the hidden `man --dir DIR`.
//!
//! Layout: `cli.rs` holds the clap definitions, `cmd/` one module per command group
//! (`cmd/policy.rs` the offline ones), `config.rs` the configuration file and which
//! controller, CA and credential a command uses, `connect.rs` the channel, TLS and
//! credential setup, `output.rs` the output formats, `fail.rs` exit codes and error
//! reports; this file only parses and dispatches.
//!
//! Exit codes: the table is in `gatewayctl --help` (`cli.rs`) and the README; gRPC
//! status codes are mapped to them in one place, `connect::Ctl::fail`. `diff` alone, like
//! diff(1): 0 no changes, 1 changes, 2 any error.

mod cli;
mod cmd;
mod config;
mod connect;
mod fail;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use policy_compiler::json_schema;

use crate::cli::{
    AuditAction, Cli, Command, KeysCommand, PolicyCmd, RevisionsCmd, UsersCmd, remote_output,
};
use crate::cmd::at_time;
use crate::fail::{Fail, R};
use crate::output::{Output, print_json};

async fn remote(
    access: &connect::Access,
    store: Option<&cmd::session::Store>,
    command: Command,
) -> R<()> {
    // Argument errors first: they need no controller.
    let at = match &command {
        Command::Explain { at, .. } => Some(at_time(at)?),
        _ => None,
    };
    if let Command::Events {
        user,
        device,
        resource,
        event,
        verdict,
        host,
        since,
        until,
        ..
    } = &command
    {
        cmd::events::check_filters(&cmd::events::EventArgs {
            user: user.clone(),
            device: device.clone(),
            resource: resource.clone(),
            event: event.clone(),
            verdict: verdict.clone(),
            host: host.clone(),
            since: since.clone(),
            until: until.clone(),
            ..Default::default()
        })?;
    }
    let ctl = connect::connect(access).await?;
    match command {
        Command::Policy(_)
        | Command::Config(_)
        | Command::Completions { .. }
        | Command::Man { .. } => Ok(()),
        Command::Apply {
            file,
            confirm,
            output,
        } => {
            let how = cmd::apply::How {
                yes: confirm.yes,
                dry_run: confirm.dry_run,
                skip_tests: confirm.skip_tests,
            };
            cmd::apply::apply(&ctl, &file, how, output.output).await
        }
        Command::Get { kind, name, output } => {
            cmd::objects::get(&ctl, kind, &name, output.output).await
        }
        Command::List { kind, output } => cmd::objects::list(&ctl, kind, output.output).await,
        Command::Create {
            kind,
            file,
            confirm,
            output,
        } => cmd::objects::create(&ctl, kind, &file, &confirm, output.output).await,
        Command::Update {
            kind,
            name,
            file,
            confirm,
            output,
        } => cmd::objects::update(&ctl, kind, &name, &file, &confirm, output.output).await,
        Command::Delete {
            kind,
            name,
            confirm,
            output,
        } => cmd::objects::delete(&ctl, kind, &name, &confirm, output.output).await,
        Command::Explain {
            from, to, output, ..
        } => cmd::explain::explain(&ctl, &from, &to, at, output.output).await,
        Command::Events {
            user,
            device,
            resource,
            event,
            verdict,
            host,
            since,
            until,
            limit,
            follow,
            output,
        } => {
            let args = cmd::events::EventArgs {
                user,
                device,
                resource,
                event,
                verdict,
                host,
                since,
                until,
                limit,
                follow,
            };
            cmd::events::events(&ctl, &args, output.output).await
        }
        Command::Audit {
            action: Some(AuditAction::Verify),
            expect_head,
            output,
            ..
        } => cmd::audit::verify(&ctl, expect_head, output.output).await,
        Command::Audit {
            action: None,
            expect_head: Some(_),
            ..
        } => Err(Fail::Usage("--expect-head goes with `audit verify`".into())),
        Command::Audit {
            action: None,
            since,
            until,
            limit,
            output,
            ..
        } => cmd::audit::report(&ctl, &since, &until, limit, output.output).await,
        Command::Agents { output } => cmd::agents::list(&ctl, output.output).await,
        Command::Keys(KeysCommand::Create {
            name,
            role,
            ttl,
            output,
        }) => cmd::keys::create(&ctl, &name, &role, ttl, output.output).await,
        Command::Keys(KeysCommand::List { output }) => cmd::keys::list(&ctl, output.output).await,
        Command::Keys(KeysCommand::Revoke { name, output }) => {
            cmd::keys::revoke(&ctl, &name, output.output).await
        }
        Command::RevokeAgent { agent_id, output } => {
            cmd::agents::revoke(&ctl, &agent_id, output.output).await
        }
        Command::Login {
            user,
            totp,
            password_stdin,
            output,
        } => cmd::session::login(&ctl, &user, totp, password_stdin, store, output.output).await,
        Command::Whoami { output } => cmd::session::whoami(&ctl, output.output).await,
        Command::EnrollToken { host, ttl, output } => {
            cmd::agents::enroll_token(&ctl, &host, ttl, output.output).await
        }
        Command::Diff { file, output } => cmd::diff::diff(&ctl, &file, output.output).await,
        Command::Export { out } => cmd::export::export(&ctl, out.as_deref()).await,
        Command::Revisions(RevisionsCmd::List {
            limit,
            before,
            output,
        }) => cmd::revisions::list(&ctl, limit, before, output.output).await,
        Command::Revisions(RevisionsCmd::Show { revision }) => {
            cmd::revisions::show(&ctl, revision).await
        }
        Command::Revisions(RevisionsCmd::Diff { from, to, lines }) => {
            cmd::revisions::diff(&ctl, from, to, lines).await
        }
        Command::Users(UsersCmd::Create {
            name,
            role,
            password_stdin,
            output,
        }) => cmd::users::create(&ctl, &name, &role, password_stdin, output.output).await,
        Command::Users(UsersCmd::List { output }) => cmd::users::list(&ctl, output.output).await,
        Command::Users(UsersCmd::Delete { name, output }) => {
            cmd::users::delete(&ctl, &name, output.output).await
        }
        Command::Users(UsersCmd::ResetTotp { name, output }) => {
            cmd::users::reset_totp(&ctl, &name, output.output).await
        }
        Command::Passwd {
            password_stdin,
            output,
        } => cmd::session::passwd(&ctl, password_stdin, output.output).await,
        Command::Logout { output } => {
            cmd::session::logout(&ctl, access.api_key.as_deref(), store, output.output).await
        }
    }
}

fn run(cli: Cli, flags: cmd::config_cmd::Flags) -> R<()> {
    match cli.command {
        Command::Config(c) => cmd::config_cmd::run(&config::path(cli.config.as_deref())?, c, flags),
        Command::Policy(cmd) => match cmd {
            PolicyCmd::Check {
                files,
                verbose,
                output,
            } => cmd::policy::check(&files, verbose, output.output),
            PolicyCmd::Explain {
                file,
                from,
                to,
                at,
                output,
            } => cmd::policy::explain(&file, &from, &to, &at, output.output),
            PolicyCmd::Compile {
                file,
                host,
                at,
                output,
            } => cmd::policy::compile(&file, &host, &at, output.output),
            PolicyCmd::Nft { file, host, at } => cmd::policy::nft(&file, &host, &at),
            PolicyCmd::Schema => {
                print_json(&json_schema());
                Ok(())
            }
        },
        Command::Completions { shell } => {
            // Into memory first, then printed: a closed stdout ends quietly (see `fail`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gatewayctl", &mut script);
            print!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .map_err(|e| Fail::Usage(format!("--dir {}: {e}", dir.display()))),
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Fail::Usage(format!("cannot start the async runtime: {e}")))?;
            let json = remote_output(&command) == Some(Output::Json);
            let diff = matches!(
                command,
                Command::Diff { .. } | Command::Revisions(RevisionsCmd::Diff { .. })
            );
            let r = (|| {
                let file = config::path(cli.config.as_deref())?;
                let cfg = config::load(&file)?;
                let resolved = config::resolve(
                    &cfg,
                    cli.context.as_deref(),
                    cli.controller.as_deref(),
                    cli.api_key.as_deref(),
                    cli.ca.as_deref(),
                )?;
                let store = resolved
                    .context
                    .clone()
                    .map(|context| cmd::session::Store { file, context });
                let access = connect::Access {
                    url: resolved.url,
                    api_key: resolved.api_key,
                    ca: resolved.ca,
                };
                rt.block_on(remote(&access, store.as_ref(), command))
            })();
            // `diff`: 1 means changes, so every error exits 2.
            let r = if diff { r.map_err(cmd::diff::error) } else { r };
            // Scripts reading `--output json` get a JSON document on failure too.
            if json
                && let Err(f) = &r
                && f.reported()
            {
                print_json(&f.json());
            }
            r
        }
    }
}

fn main() -> ExitCode {
    fail::end_quietly_on_closed_stdout();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `config set-context` stores --controller and --ca given as flags, never the
    // environment's.
    let flag = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let flags = cmd::config_cmd::Flags {
        controller: cli.controller.clone().filter(|_| flag("controller")),
        ca: cli.ca.clone().filter(|_| flag("ca")),
        api_key: flag("api_key"),
    };
    match run(cli, flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = f.message() {
                eprintln!("{m}");
            }
            ExitCode::from(f.code())
        }
    }
}
