//! `gatewayctl`: the admin CLI. Offline policy commands (`policy check|explain|compile|
//! nft|schema`) and remote commands against a controller's Admin gRPC API (`apply`,
//! `get`, `list`, `create`, `update`, `delete`, `explain`, `events`, `audit`, `agents`,
//! `enroll-token`; see `client.rs`).
//!
//! Exit codes: 0 success; 1 the policy has errors or failing `[[test]]` blocks, or the
//! controller refused the request (invalid policy, not found, already exists, a
//! concurrent change, a declined confirmation); 2 usage or I/O errors (bad arguments,
//! unreadable files, unknown hosts, an unreachable controller, no terminal to confirm on).

mod client;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway_proto::v1::ObjectKind;
use gatewayctl::remote::{now_unix, parse_duration, parse_kind};
use gatewayctl::{proto_name, resolve_from, resolve_host, resolve_to, verdict_name};
use policy_compiler::{
    Diagnostic, HostView, Parsed, Policy, TestResult, compile, explain, format_rfc3339,
    json_schema, nft, parse, parse_rfc3339, run_tests,
};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "gatewayctl",
    version,
    about = "Admin CLI of the zero-trust access gateway",
    long_about = "Admin CLI of the zero-trust access gateway.\n\n\
        The `policy` commands work offline on TOML policy files: validate them and run their \
        [[test]] blocks, explain a decision, show what a host's compiled maps hold, or emit an \
        equivalent nftables ruleset.\n\n\
        The other commands talk to a controller (`gateway-controller run`, see --controller): \
        apply a policy file after reviewing its plan, read and change single objects, explain \
        a decision with the live policy, query and follow connection events, read the admin \
        audit trail, list agents and create their enrollment tokens. Every remote command \
        takes `--output json` (one JSON document on stdout; `events --follow`: one JSON \
        object per line; on failure `{\"error\": {\"message\", \"exit_code\", \"diagnostics\"?}}`).\n\n\
        Exit codes: 0 success; 1 policy errors, failing tests, or a request the controller \
        refused (invalid policy, not found, already exists, concurrent change, declined \
        confirmation); 2 usage or I/O errors (including an unreachable controller).",
    propagate_version = true
)]
struct Cli {
    /// The controller's gRPC URL, for the remote commands: `https://HOST:PORT` (with
    /// --ca; a bare HOST:PORT means https), or `http://` to a controller on loopback
    /// only.
    #[arg(
        long,
        global = true,
        env = "GATEWAYCTL_CONTROLLER",
        default_value = "https://127.0.0.1:50051",
        value_name = "URL"
    )]
    controller: String,
    /// API key or session token for the remote commands (sent as `authorization: Bearer`).
    #[arg(
        long,
        global = true,
        env = "GATEWAYCTL_API_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate, for `https://` URLs
    /// (an error with an `http://` URL).
    #[arg(long, global = true, env = "GATEWAYCTL_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create an API key; the secret is printed once on stdout.
    Create {
        /// Unique name (never reused, also not after revocation).
        name: String,
        /// `admin`, `operator` or `auditor`.
        #[arg(long, value_parser = ["admin", "operator", "auditor"])]
        role: String,
        /// Lifetime: `30d`, `12h`, ... [default: 90 days; at most 2 years].
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        ttl: Option<u64>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// API keys: name, role, created, expires, revoked.
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Revoke an API key: every later call with it is refused.
    Revoke {
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AuditAction {
    /// Prove the audit trail's hash chain unbroken, or name the first bad record.
    Verify,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Offline policy commands: check, explain, compile, nft, schema.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Apply a policy file to the controller: show the plan, confirm, apply.
    ///
    /// The controller validates the whole file (errors are printed located,
    /// `file:line:col: error: ...`, exit 1) and plans the change: objects added, changed
    /// and removed, and per affected host the entries added/changed/removed and its new
    /// generation. The plan is shown, then "Apply these changes? [y/N]" is asked on a
    /// terminal (`--yes` skips the question; without a terminal and without `--yes` the
    /// command refuses, exit 2). The change is applied only if nobody changed the policy
    /// since the plan was computed (otherwise exit 1, nothing applied).
    ///
    /// JSON: `{"dry_run", "applied", "plan": {"base_revision", "new_revision",
    /// "objects": [{"kind", "name", "change", "before", "after"}], "hosts": [{"host",
    /// "base_generation", "new_generation", "src"|"dst"|"rules"|"total": {"added",
    /// "changed", "removed"}, "metadata_changed", "connected_agents"}], "warnings"}}`.
    Apply {
        /// Policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        confirm: ConfirmArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show one object as its TOML table.
    ///
    /// JSON: `{"kind", "name", "toml", "revision"}`.
    Get {
        /// remote-network, resource, user, device, service-account, group, grant, test.
        #[arg(value_name = "KIND", value_parser = kind_arg)]
        kind: ObjectKind,
        /// The object's name (a user's email).
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the objects of one kind (or all of them).
    ///
    /// JSON: `{"revision", "objects": [{"kind", "name", "toml"}]}`.
    List {
        /// remote-network, resource, user, device, service-account, group, grant, test
        /// (default: every kind).
        #[arg(value_name = "KIND", value_parser = kind_arg)]
        kind: Option<ObjectKind>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Add one object from a file holding its TOML table.
    ///
    /// The table's header is optional except for grants (`[[allow]]` or `[[deny]]`
    /// decides the action). Plans, confirms and reports like `apply` (same JSON).
    Create {
        #[arg(value_name = "KIND", value_parser = kind_arg)]
        kind: ObjectKind,
        /// File with the object's TOML table.
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        confirm: ConfirmArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Replace one object's table.
    ///
    /// The new table must keep the kind and name (renaming is delete + create). Plans,
    /// confirms and reports like `apply` (same JSON).
    Update {
        #[arg(value_name = "KIND", value_parser = kind_arg)]
        kind: ObjectKind,
        #[arg(value_name = "NAME")]
        name: String,
        /// File with the object's new TOML table.
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        confirm: ConfirmArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Remove one object.
    ///
    /// Plans, confirms and reports like `apply` (same JSON); the controller refuses if
    /// other objects still refer to it.
    Delete {
        #[arg(value_name = "KIND", value_parser = kind_arg)]
        kind: ObjectKind,
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Explain the decision for one packet with the controller's current policy (same
    /// report as `gatewayctl policy explain`).
    Explain {
        /// Source: a device name, a service-account key (`ci-cd/runner-1`) or an IP
        /// address.
        #[arg(long, value_name = "PRINCIPAL")]
        from: String,
        /// Destination: `198.18.1.10:22/tcp`, `[2001:db8::5]:443/udp`, `198.18.1.1/icmp`,
        /// or a resource name.
        #[arg(long, value_name = "DEST")]
        to: String,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Connection events stored by the controller, oldest first; `--follow` then streams
    /// new ones until Ctrl-C.
    ///
    /// JSON: `{"events": [{"id", "time", "time_unix_ms", "received_unix_ms", "agent_id",
    /// "event", "verdict", "reason", "user", "device", "service_account", "src_ip",
    /// "src_port", "resource", "dst_ip", "dst_port", "protocol", "rule", "rule_id",
    /// "connector", "remote_network", "host", ...}]}`; with `--follow` one such event
    /// object per line.
    Events {
        /// Only events of this user (email).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Only events of this device.
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Only events for this resource.
        #[arg(long, value_name = "NAME")]
        resource: Option<String>,
        /// Only this event type (`flow_start`, `flow_end`, `deny`, `audit`, ...).
        #[arg(long, value_name = "TYPE")]
        event: Option<String>,
        /// Only this verdict: allow, deny or audit.
        #[arg(long, value_name = "VERDICT")]
        verdict: Option<String>,
        /// Only events reported by this host (`connector:NAME`, `device:NAME`).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Events at or after this instant: RFC 3339, or a duration ago (`1h`).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Events before this instant: RFC 3339, or a duration ago.
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
        /// At most this many (the oldest matching; the controller caps at 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// After the stored events, stream new ones until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// The admin audit trail: who changed what, oldest first.
    ///
    /// JSON: `{"records": [{"id", "time", "time_unix_ms", "actor", "action", "target",
    /// "before", "after", "revision"}]}`.
    Audit {
        /// `verify`: check the hash chain of the whole trail instead of listing it; exit 1
        /// names the first altered, missing or reordered record.
        #[arg(value_enum)]
        action: Option<AuditAction>,
        /// Records at or after this instant: RFC 3339, or a duration ago (`1h`).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Records before this instant.
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
        /// At most this many (the oldest; the controller caps at 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// With `verify`: a head hash kept outside the controller earlier (printed by a
        /// previous `audit verify`, or exported by the controller's --audit-head-file);
        /// it must still be in the chain, otherwise records were rewritten or cut since
        /// (exit 1).
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Enrolled agents: host, connection, acknowledged vs current generation.
    ///
    /// JSON: `{"agents": [{"agent_id", "host", "hostname", "connected",
    /// "acked_generation", "current_generation", "in_sync", "last_seen",
    /// "last_seen_unix_ms", "enrolled", "enrolled_unix_ms"}]}`.
    Agents {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Create a one-time enrollment token for an agent (printed once, on stdout).
    ///
    /// JSON: `{"token", "host", "expires", "expires_unix_ms"}`.
    /// API keys for automation: create (the secret is printed once), list, revoke. Admin only.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Revoke an enrolled agent: its stream ends and every later call is refused.
    RevokeAgent {
        /// The agent id (`gatewayctl agents`).
        agent_id: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Log in as an admin user with password and TOTP code; prints a session token to use
    /// as `GATEWAYCTL_API_KEY` (it expires after the controller's --session-ttl).
    Login {
        #[arg(long)]
        user: String,
        /// The current 6-digit code of the authenticator app [default: asked].
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Who the controller takes the credential for, its role and expiry.
    Whoami {
        #[command(flatten)]
        output: OutputArg,
    },
    EnrollToken {
        /// The host the agent enforces for: `connector:NAME` or `device:NAME`.
        #[arg(long, value_name = "HOST")]
        host: String,
        /// How long the token is valid: `90s`, `30m`, `1h`, `7d` (at most 365d).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration_arg)]
        ttl: u64,
        #[command(flatten)]
        output: OutputArg,
    },
}

fn kind_arg(s: &str) -> Result<ObjectKind, String> {
    parse_kind(s)
}

fn duration_arg(s: &str) -> Result<u64, String> {
    parse_duration(s)
}

#[derive(Args, Debug)]
struct ConfirmArgs {
    /// Apply without asking for confirmation.
    #[arg(long, short)]
    yes: bool,
    /// Only show the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
}

#[derive(Args, Debug)]
struct OutputArg {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args, Debug)]
struct AtArg {
    /// Evaluate at this instant (RFC 3339, e.g. `2030-01-01T00:00:00Z`) instead of now.
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Validate policy files and run their [[test]] blocks.
    ///
    /// Prints every error and warning as `file:line:col: severity: message (help: ...)`,
    /// every failing test with the expected and actual verdict and the deciding rule, and a
    /// summary line. Exits 0 only if no file has errors and every test passes (1 on policy
    /// errors or failing tests, 2 if a file cannot be read). Diagnostics go to stderr, test
    /// results and the summary to stdout; `--output json` prints only the JSON report.
    Check {
        /// Policy files (TOML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Also list passing tests.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Explain the decision for one packet: verdict, reason, deciding grant, and every
    /// grant that was considered.
    Explain {
        /// Policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Source: a device name (`alice-laptop`), a service-account key
        /// (`ci-cd/runner-1`) or an IP address.
        #[arg(long, value_name = "PRINCIPAL")]
        from: String,
        /// Destination: `198.18.1.10:22/tcp`, `[2001:db8::5]:443/udp`, `198.18.1.1/icmp`,
        /// or a resource name (its address and first port).
        #[arg(long, value_name = "DEST")]
        to: String,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Compile the policy for one host and summarize the map entries it gets.
    ///
    /// Text output lists the SRC (source -> class), DST (prefix -> atom) and RULES
    /// ((class, atom, proto, port block) -> verdict) entries with counts and when the host
    /// must recompile; `--output json` dumps the whole compiled view.
    Compile {
        /// Policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The host: `connector:<name>` or `device:<name>`.
        #[arg(long, value_name = "HOST")]
        host: String,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print an nftables ruleset (`table inet zt_gateway`) with the same verdicts as the
    /// host's compiled view.
    ///
    /// Load it with `gatewayctl policy nft FILE --host ... | nft -f -`. Decisions are
    /// those at `--at` (default now): regenerate when a grant expires (the header says
    /// when).
    Nft {
        /// Policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The host: `connector:<name>` or `device:<name>`.
        #[arg(long, value_name = "HOST")]
        host: String,
        #[command(flatten)]
        at: AtArg,
    },
    /// Print the JSON Schema (draft 2020-12) of the policy file format.
    Schema,
}

/// Why a command failed.
enum Fail {
    /// Policy errors (already printed) or failing tests: exit 1.
    Policy,
    /// A request the controller refused, or a failure: exit 1 (`gatewayctl: error: ...`).
    Error(String),
    /// Located diagnostics to print as they are: exit 1.
    Raw(String),
    /// Located diagnostics (printed as they are), then a summary: exit 1.
    Diagnostics(String, String),
    /// Usage or I/O errors: exit 2.
    Usage(String),
}

impl Fail {
    fn code(&self) -> u8 {
        match self {
            Fail::Policy | Fail::Error(_) | Fail::Raw(_) | Fail::Diagnostics(..) => 1,
            Fail::Usage(_) => 2,
        }
    }

    fn message(&self) -> Option<String> {
        match self {
            Fail::Policy => None,
            Fail::Error(m) | Fail::Usage(m) if m.is_empty() => None,
            Fail::Error(m) | Fail::Usage(m) => Some(format!("gatewayctl: error: {m}")),
            Fail::Raw(m) => Some(m.clone()),
            Fail::Diagnostics(d, m) => Some(format!("{d}\ngatewayctl: error: {m}")),
        }
    }

    /// The failure as `{"error": {...}}` for `--output json`.
    fn json(&self) -> Value {
        let (message, diags) = match self {
            Fail::Policy => (String::new(), None),
            Fail::Error(m) | Fail::Usage(m) => (m.clone(), None),
            Fail::Raw(d) => (d.lines().next().unwrap_or_default().to_string(), Some(d)),
            Fail::Diagnostics(d, m) => (m.clone(), Some(d)),
        };
        let mut e = json!({"message": message, "exit_code": self.code()});
        if let Some(d) = diags {
            e["diagnostics"] = json!(d.lines().collect::<Vec<_>>());
        }
        json!({ "error": e })
    }
}

type R<T> = Result<T, Fail>;

fn at_time(at: &AtArg) -> R<i64> {
    match &at.at {
        None => Ok(now_unix()),
        Some(s) => parse_rfc3339(s).map_err(|e| {
            Fail::Usage(format!(
                "invalid --at `{s}`: {e} (expected RFC 3339, e.g. 2030-01-01T00:00:00Z)"
            ))
        }),
    }
}

fn read(path: &Path) -> R<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::Usage(format!("cannot read `{}`: {e}", path.display())))
}

/// Reads and parses a policy; prints warnings (and errors, then fails) to stderr.
fn load(path: &Path, now: i64) -> R<Policy> {
    let text = read(path)?;
    match parse(&text, &path.display().to_string(), now) {
        Ok(Parsed { policy, warnings }) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            Ok(policy)
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            let n = diags.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "gatewayctl: `{}` has {n} error{}",
                path.display(),
                plural(n)
            );
            Err(Fail::Policy)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

fn rule_json(policy: &Policy, id: u32) -> Value {
    policy
        .rule(id)
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(Value::Null)
}

fn rule_text(policy: &Policy, rule: Option<u32>) -> String {
    match rule.and_then(|r| policy.rule(r)) {
        Some(m) => m.to_string(),
        None => "default deny (rule 0)".to_string(),
    }
}

fn reason_name(r: policy_compiler::Reason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{r:?}"))
}

// ------------------------------------------------------------------ check

struct FileReport {
    file: String,
    io_error: Option<String>,
    diags: Vec<Diagnostic>,
    tests: Vec<(TestResult, String, String)>,
    policy: Option<Policy>,
}

fn check_file(path: &Path, now: i64) -> FileReport {
    let file = path.display().to_string();
    let mut rep = FileReport {
        file: file.clone(),
        io_error: None,
        diags: Vec::new(),
        tests: Vec::new(),
        policy: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            rep.io_error = Some(format!("cannot read `{file}`: {e}"));
            return rep;
        }
    };
    match parse(&text, &file, now) {
        Err(diags) => rep.diags = diags,
        Ok(Parsed { policy, warnings }) => {
            rep.diags = warnings;
            let results = run_tests(&policy);
            rep.tests = results
                .into_iter()
                .zip(&policy.tests)
                .map(|(r, t)| (r, t.from.clone(), t.to.clone()))
                .collect();
            rep.policy = Some(policy);
        }
    }
    rep
}

fn check(files: &[PathBuf], verbose: bool, output: Output) -> R<()> {
    let now = now_unix();
    let reports: Vec<FileReport> = files.iter().map(|f| check_file(f, now)).collect();
    let errors: usize = reports
        .iter()
        .map(|r| r.diags.iter().filter(|d| d.is_error()).count())
        .sum();
    let warnings: usize = reports
        .iter()
        .map(|r| r.diags.iter().filter(|d| !d.is_error()).count())
        .sum();
    let tests: usize = reports.iter().map(|r| r.tests.len()).sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.tests.iter().filter(|t| !t.0.passed).count())
        .sum();
    let io_errors: usize = reports.iter().filter(|r| r.io_error.is_some()).count();
    let ok = errors == 0 && failed == 0 && io_errors == 0;

    match output {
        Output::Json => {
            let files: Vec<Value> = reports
                .iter()
                .map(|r| {
                    let tests: Vec<Value> = r
                        .tests
                        .iter()
                        .map(|(t, from, to)| {
                            let policy = r.policy.as_ref();
                            json!({
                                "name": t.name,
                                "line": t.line,
                                "column": t.column,
                                "from": from,
                                "to": to,
                                "at": format_rfc3339(t.at),
                                "expected": verdict_name(t.expected),
                                "actual": verdict_name(t.decision.verdict),
                                "reason": reason_name(t.decision.reason),
                                "rule": policy.map_or(Value::Null, |p| rule_json(p, t.decision.rule_id())),
                                "passed": t.passed,
                            })
                        })
                        .collect();
                    let errs: Vec<&Diagnostic> = r.diags.iter().filter(|d| d.is_error()).collect();
                    let warns: Vec<&Diagnostic> =
                        r.diags.iter().filter(|d| !d.is_error()).collect();
                    json!({
                        "file": r.file,
                        "ok": r.io_error.is_none() && errs.is_empty() && r.tests.iter().all(|t| t.0.passed),
                        "io_error": r.io_error,
                        "errors": errs,
                        "warnings": warns,
                        "tests": tests,
                    })
                })
                .collect();
            print_json(&json!({
                "ok": ok,
                "files": files,
                "summary": {
                    "files": reports.len(),
                    "unreadable": io_errors,
                    "errors": errors,
                    "warnings": warnings,
                    "tests": tests,
                    "passed": tests - failed,
                    "failed": failed,
                },
            }));
        }
        Output::Text => {
            for r in &reports {
                if let Some(e) = &r.io_error {
                    eprintln!("gatewayctl: {e}");
                    continue;
                }
                for d in &r.diags {
                    eprintln!("{d}");
                }
                let Some(policy) = &r.policy else {
                    let n = r.diags.iter().filter(|d| d.is_error()).count();
                    println!("{}: {n} error{}, tests not run", r.file, plural(n));
                    continue;
                };
                for (t, from, to) in &r.tests {
                    if t.passed && !verbose {
                        continue;
                    }
                    let mut s = String::new();
                    let status = if t.passed { "ok" } else { "FAILED" };
                    let _ = write!(
                        s,
                        "{}:{}:{}: test `{}`: {status}: expected {}, got {} ({})",
                        r.file,
                        t.line,
                        t.column,
                        t.name,
                        verdict_name(t.expected),
                        verdict_name(t.decision.verdict),
                        reason_name(t.decision.reason),
                    );
                    if !t.passed {
                        let _ = write!(
                            s,
                            "\n    packet: from `{from}` to `{to}` at {}\n    deciding rule: {}",
                            format_rfc3339(t.at),
                            rule_text(policy, t.decision.rule.map(|r| r.0))
                        );
                    }
                    println!("{s}");
                }
                let f = r.tests.iter().filter(|t| !t.0.passed).count();
                println!(
                    "{}: {} test{}, {} passed, {f} failed",
                    r.file,
                    r.tests.len(),
                    plural(r.tests.len()),
                    r.tests.len() - f
                );
            }
            println!(
                "summary: {} file{}, {errors} error{}, {warnings} warning{}, {tests} test{}, {} passed, {failed} failed{}: {}",
                reports.len(),
                plural(reports.len()),
                plural(errors),
                plural(warnings),
                plural(tests),
                tests - failed,
                if io_errors > 0 {
                    format!(", {io_errors} unreadable")
                } else {
                    String::new()
                },
                if ok { "ok" } else { "FAILED" },
            );
        }
    }
    if io_errors > 0 {
        Err(Fail::Usage(String::new()))
    } else if ok {
        Ok(())
    } else {
        Err(Fail::Policy)
    }
}

// ------------------------------------------------------------------ explain

fn explain_cmd(file: &Path, from: &str, to: &str, at: &AtArg, output: Output) -> R<()> {
    let at = at_time(at)?;
    let policy = load(file, now_unix())?;
    let target = resolve_to(&policy, to).map_err(|e| Fail::Usage(format!("--to: {e}")))?;
    let src = resolve_from(&policy, from, target.addr)
        .map_err(|e| Fail::Usage(format!("--from: {e}")))?;
    let e = explain(&policy, &target.packet(src), at);
    let d = e.decision;
    let deciding = d.rule.and_then(|r| policy.rule(r.0));
    match output {
        Output::Json => print_json(&json!({
            "packet": {
                "from": from,
                "src": src,
                "principal": e.principal,
                "to": to,
                "dst": target.addr,
                "proto": proto_name(target.proto),
                "dst_port": target.port,
                "at": format_rfc3339(at),
            },
            "verdict": verdict_name(d.verdict),
            "reason": reason_name(d.reason),
            "rule": deciding.and_then(|m| serde_json::to_value(m).ok()),
            "resources": e.resources,
            "considered": e.considered,
        })),
        Output::Text => {
            println!(
                "packet:   {} ({src}) -> {target} at {}",
                e.principal.as_deref().unwrap_or("unknown source"),
                format_rfc3339(at)
            );
            println!("verdict:  {}", verdict_name(d.verdict));
            println!("reason:   {}", reason_name(d.reason));
            println!("decided by: {}", rule_text(&policy, d.rule.map(|r| r.0)));
            println!(
                "resources covering the destination: {}",
                if e.resources.is_empty() {
                    "none".to_string()
                } else {
                    e.resources.join(", ")
                }
            );
            if e.considered.is_empty() {
                println!("considered grants: none");
            } else {
                println!("considered grants:");
                for c in &e.considered {
                    let outcome = match &c.outcome {
                        policy_compiler::Outcome::Matched => "matched".to_string(),
                        policy_compiler::Outcome::Expired { expires_at } => {
                            format!("expired at {}", format_rfc3339(*expires_at))
                        }
                        policy_compiler::Outcome::AddressMismatch => {
                            "resource does not cover the destination".to_string()
                        }
                        policy_compiler::Outcome::PortMismatch { allowed } => {
                            format!("protocol/port not covered (covers {allowed})")
                        }
                        policy_compiler::Outcome::NotForPrincipal => {
                            "not granted to this source".to_string()
                        }
                    };
                    let mark = if d.rule.map(|r| r.0) == Some(c.rule) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        " {mark} rule {:>3} {:<5} `{}` -> `{}`: {outcome}",
                        c.rule,
                        c.action.to_string(),
                        c.grant,
                        c.resource
                    );
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ compile / nft

fn compile_view(file: &Path, host: &str, at: i64) -> R<(Policy, HostView)> {
    let policy = load(file, at)?;
    let h = resolve_host(&policy, host).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    let view = compile(&policy, &h, at).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    Ok((policy, view))
}

fn compile_cmd(file: &Path, host: &str, at: &AtArg, output: Output) -> R<()> {
    let at = at_time(at)?;
    let (_policy, v) = compile_view(file, host, at)?;
    if output == Output::Json {
        let value = serde_json::to_value(&v)
            .map_err(|e| Fail::Usage(format!("cannot serialize the view: {e}")))?;
        print_json(&value);
        return Ok(());
    }
    let host = match &v.host {
        policy_compiler::Host::Connector(c) => format!("connector `{c}`"),
        policy_compiler::Host::Device(d) => format!("device `{d}`"),
    };
    let n_atoms = v.atom_meta.len();
    println!("host:        {host}");
    println!("compiled at: {}", format_rfc3339(v.compiled_at));
    println!(
        "networks:    {} (connectors: {})",
        v.networks.join(", "),
        v.connectors.join(", ")
    );
    let protected: Vec<String> = v.protected.iter().map(ToString::to_string).collect();
    println!("protected:   {}", protected.join(", "));
    println!(
        "counts:      {} source{}, {} class{}, {} DST prefix{}, {n_atoms} atom{}, {} rule entr{}",
        v.sources.len(),
        plural(v.sources.len()),
        v.classes,
        if v.classes == 1 { "" } else { "es" },
        v.atoms.len(),
        if v.atoms.len() == 1 { "" } else { "es" },
        plural(n_atoms),
        v.rules.len(),
        if v.rules.len() == 1 { "y" } else { "ies" },
    );
    println!(
        "recompile:   {}",
        v.recompile_at
            .map_or_else(|| "never".to_string(), format_rfc3339)
    );
    if let Some(first) = v
        .rules
        .iter()
        .filter_map(|r| r.value.valid_until_unix)
        .min()
    {
        println!(
            "first expiry: {} (entries switch to their `after` decision by themselves)",
            format_rfc3339(first)
        );
    }
    println!("\nSRC map ({} entries): source -> class", v.sources.len());
    for s in &v.sources {
        let who = v
            .principals
            .get(&s.principal)
            .map_or_else(String::new, |p| match &p.user {
                Some(u) => format!("{} ({u})", p.name),
                None => p.name.clone(),
            });
        println!("  {:<24} class {:<3} {who}", s.addr.to_string(), s.class);
    }
    println!("\nDST map ({} entries): prefix -> atom", v.atoms.len());
    for a in &v.atoms {
        let res = v.atom_meta.get(&a.atom).map_or_else(String::new, |m| {
            if m.resources.is_empty() {
                format!("{} (no resource)", m.network)
            } else {
                format!("{}: {}", m.network, m.resources.join(", "))
            }
        });
        println!(
            "  {:<24} atom {:<3} default {:<5} {res}",
            a.prefix.to_string(),
            a.atom,
            verdict_name(a.default_verdict)
        );
    }
    println!(
        "\nRULES map ({} entries): (class, atom, proto, ports) -> verdict",
        v.rules.len()
    );
    for r in &v.rules {
        let k = &r.key;
        let ports = if k.port_bits == 0 {
            "any".to_string()
        } else if k.port == k.last_port() {
            k.port.to_string()
        } else {
            format!("{}-{}", k.port, k.last_port())
        };
        let mut val = format!("{} (rule {})", verdict_name(r.value.verdict), r.value.rule);
        if let Some(u) = r.value.valid_until_unix {
            let _ = write!(
                val,
                " until {}, then {} (rule {})",
                format_rfc3339(u),
                verdict_name(r.value.after_verdict),
                r.value.after_rule
            );
        }
        println!(
            "  class {:<3} atom {:<3} {:<6} {:<11} -> {val}",
            k.class,
            k.atom,
            proto_name(k.proto),
            ports
        );
    }
    Ok(())
}

fn nft_cmd(file: &Path, host: &str, at: &AtArg) -> R<()> {
    let at = at_time(at)?;
    let policy = load(file, at)?;
    let h = resolve_host(&policy, host).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    let s = nft(&policy, &h, at).map_err(|e| Fail::Usage(format!("--host: {e}")))?;
    print!("{s}");
    Ok(())
}

/// The output format of a remote command (for reporting its failure).
fn remote_output(c: &Command) -> Option<Output> {
    Some(
        match c {
            Command::Policy(_) => return None,
            Command::Apply { output, .. }
            | Command::Get { output, .. }
            | Command::List { output, .. }
            | Command::Create { output, .. }
            | Command::Update { output, .. }
            | Command::Delete { output, .. }
            | Command::Explain { output, .. }
            | Command::Events { output, .. }
            | Command::Audit { output, .. }
            | Command::Agents { output }
            | Command::Keys(
                KeysCommand::Create { output, .. }
                | KeysCommand::List { output }
                | KeysCommand::Revoke { output, .. },
            )
            | Command::RevokeAgent { output, .. }
            | Command::Login { output, .. }
            | Command::Whoami { output }
            | Command::EnrollToken { output, .. } => output,
        }
        .output,
    )
}

async fn remote(access: &client::Access, command: Command) -> R<()> {
    // Argument errors first: they need no controller.
    let at = match &command {
        Command::Explain { at, .. } => Some(at_time(at)?),
        _ => None,
    };
    let ctl = client::connect(access).await?;
    match command {
        Command::Policy(_) => Ok(()),
        Command::Apply {
            file,
            confirm,
            output,
        } => client::apply(&ctl, &file, confirm.yes, confirm.dry_run, output.output).await,
        Command::Get { kind, name, output } => client::get(&ctl, kind, &name, output.output).await,
        Command::List { kind, output } => client::list(&ctl, kind, output.output).await,
        Command::Create {
            kind,
            file,
            confirm,
            output,
        } => {
            client::create(
                &ctl,
                kind,
                &file,
                confirm.yes,
                confirm.dry_run,
                output.output,
            )
            .await
        }
        Command::Update {
            kind,
            name,
            file,
            confirm,
            output,
        } => {
            client::update(
                &ctl,
                kind,
                &name,
                &file,
                confirm.yes,
                confirm.dry_run,
                output.output,
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            confirm,
            output,
        } => {
            client::delete(
                &ctl,
                kind,
                &name,
                confirm.yes,
                confirm.dry_run,
                output.output,
            )
            .await
        }
        Command::Explain {
            from, to, output, ..
        } => client::explain(&ctl, &from, &to, at, output.output).await,
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
            let args = client::EventArgs {
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
            client::events(&ctl, &args, output.output).await
        }
        Command::Audit {
            action: Some(AuditAction::Verify),
            expect_head,
            output,
            ..
        } => client::audit_verify(&ctl, expect_head, output.output).await,
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
        } => client::audit(&ctl, &since, &until, limit, output.output).await,
        Command::Agents { output } => client::agents(&ctl, output.output).await,
        Command::Keys(KeysCommand::Create {
            name,
            role,
            ttl,
            output,
        }) => client::key_create(&ctl, &name, &role, ttl, output.output).await,
        Command::Keys(KeysCommand::List { output }) => client::key_list(&ctl, output.output).await,
        Command::Keys(KeysCommand::Revoke { name, output }) => {
            client::key_revoke(&ctl, &name, output.output).await
        }
        Command::RevokeAgent { agent_id, output } => {
            client::revoke_agent(&ctl, &agent_id, output.output).await
        }
        Command::Login {
            user,
            totp,
            password_stdin,
            output,
        } => client::login(&ctl, &user, totp, password_stdin, output.output).await,
        Command::Whoami { output } => client::whoami(&ctl, output.output).await,
        Command::EnrollToken { host, ttl, output } => {
            client::enroll_token(&ctl, &host, ttl, output.output).await
        }
    }
}

fn run(cli: Cli) -> R<()> {
    match cli.command {
        Command::Policy(cmd) => match cmd {
            PolicyCmd::Check {
                files,
                verbose,
                output,
            } => check(&files, verbose, output.output),
            PolicyCmd::Explain {
                file,
                from,
                to,
                at,
                output,
            } => explain_cmd(&file, &from, &to, &at, output.output),
            PolicyCmd::Compile {
                file,
                host,
                at,
                output,
            } => compile_cmd(&file, &host, &at, output.output),
            PolicyCmd::Nft { file, host, at } => nft_cmd(&file, &host, &at),
            PolicyCmd::Schema => {
                print_json(&json_schema());
                Ok(())
            }
        },
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Fail::Usage(format!("cannot start the async runtime: {e}")))?;
            let json = remote_output(&command) == Some(Output::Json);
            let access = client::Access {
                url: cli.controller.clone(),
                api_key: cli.api_key.clone(),
                ca: cli.ca.clone(),
            };
            let r = rt.block_on(remote(&access, command));
            // Scripts reading `--output json` get a JSON document on failure too.
            if json && let Err(f) = &r {
                print_json(&f.json());
            }
            r
        }
    }
}

fn main() -> ExitCode {
    // Die quietly like other Unix tools when the reader of a pipe goes away
    // (`gatewayctl policy nft ... | head`) instead of panicking on a failed print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = f.message() {
                eprintln!("{m}");
            }
            ExitCode::from(f.code())
        }
    }
}
