//! The command line: clap definitions of every command and option (the `--help` text is
//! the reference of each command and its JSON output).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gateway_proto::v1::ObjectKind;
use gatewayctl::remote::{
    MAX_KEY_TTL_SECS, MAX_TOKEN_TTL_SECS, parse_duration_at_most, parse_kind,
};

use crate::output::Output;

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
        audit trail, list agents and create their enrollment tokens, manage API keys and \
        admin users. Which controller, CA and credential: flags, else environment variables, \
        else the context of the configuration file (`gatewayctl config`). Every remote command \
        takes `--output json` (one JSON document on stdout; `events --follow`: one JSON \
        object per line; on failure `{\"error\": {\"message\", \"exit_code\", \"diagnostics\"?}}`).\n\n\
        Exit codes (every command):\n  \
        0  success (also a dry run, or an apply with nothing to change)\n  \
        1  the answer is no: policy errors, failing [[test]] blocks, or the controller \
        refused the request (invalid policy or object, failing tests, not found, already \
        exists, a concurrent change, bad/expired/revoked credentials, a role not allowed \
        to do it), a declined confirmation, a broken audit chain\n  \
        2  the command could not be carried out: usage errors (unknown options, malformed \
        values such as `--host web` or `--ttl 800d` beyond its limit), unreadable files, an \
        unreachable controller, http:// to a TLS controller or https:// to a plaintext one, \
        a timeout, no terminal to confirm on\n  \
        141  standard output was closed by its reader (`gatewayctl ... | head`): ends \
        quietly, as if killed by SIGPIPE\n\
        `diff` alone differs, like diff(1): 0 no changes, 1 changes, 2 any error.",
    propagate_version = true
)]
pub struct Cli {
    /// The controller's gRPC URL, for the remote commands: `https://HOST:PORT` (with
    /// --ca; a bare HOST:PORT means https), or `http://` to a controller on loopback
    /// only. [default: the context's controller, else https://127.0.0.1:50051]
    #[arg(long, global = true, env = "GATEWAYCTL_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    /// API key or session token for the remote commands (sent as `authorization: Bearer`).
    /// [default: the context's credential]
    #[arg(
        long,
        global = true,
        env = "GATEWAYCTL_API_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate, for `https://` URLs
    /// (an error with an `http://` URL).
    #[arg(long, global = true, env = "GATEWAYCTL_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// The configuration file with contexts (controller, CA, credential; see `gatewayctl
    /// config`). [default: $XDG_CONFIG_HOME/zt-gateway/gatewayctl.toml, else
    /// ~/.config/zt-gateway/gatewayctl.toml]
    #[arg(long, global = true, env = "GATEWAYCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use this context of the configuration file instead of its current one.
    #[arg(long, global = true, env = "GATEWAYCTL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key; the secret is printed once on stdout.
    Create {
        /// Unique name (never reused, also not after revocation).
        name: String,
        /// `admin`, `operator` or `auditor`.
        #[arg(long, value_parser = ["admin", "operator", "auditor"])]
        role: String,
        /// Lifetime: `30d`, `12h`, ... [default: 90 days; at most 730d, longer is refused].
        #[arg(long, value_name = "DURATION", value_parser = key_ttl_arg)]
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
pub enum AuditAction {
    /// Prove the audit trail's hash chain unbroken, or name the first bad record.
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Offline policy commands: check, explain, compile, nft, schema.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Apply a policy file to the controller: show the plan, confirm, apply.
    ///
    /// The controller validates the whole file (errors are printed located,
    /// `file:line:col: error: ...`, exit 1) and plans the change: objects added, changed
    /// and removed (for a changed one, each field that changed: `~ resource web: tcp +
    /// "8443"`, `- "22"` for a list element removed, `"a" -> "b"` for a value), and per
    /// affected host the entries added/changed/removed and its new generation. The plan is shown, then "Apply these changes? [y/N]" is asked on a
    /// terminal (`--yes` skips the question; without a terminal and without `--yes` the
    /// command refuses, exit 2). The change is applied only if nobody changed the policy
    /// since the plan was computed (otherwise exit 1, nothing applied).
    ///
    /// A policy whose own [[test]] blocks fail is refused (exit 1, nothing applied): each
    /// failing test is printed as `file:line:col: error: test `NAME` fails: FROM -> TO
    /// expects allow, the policy decides deny (REASON, RULE)`. `--skip-tests` applies it
    /// anyway: the failing tests are then shown as warnings of the plan, and the audit
    /// trail records the apply as `apply_policy_skip_tests`.
    ///
    /// JSON: `{"dry_run", "applied", "plan": {"base_revision", "new_revision",
    /// "objects": [{"kind", "name", "change", "before", "after", "fields": [{"field",
    /// "before", "after", "element"}]}], "hosts": [{"host",
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
    /// JSON: `{"kind", "name", "section", "fields", "toml", "revision"}`: `fields` is the
    /// table as a JSON object, `section` its header (`allow`/`deny` for a grant).
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
    /// JSON: `{"revision", "objects": [{"kind", "name", "section", "fields", "toml"}]}`
    /// (as in `get`).
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
        /// a DNS name in place of the address (`db.prod.internal:5432/tcp`), or a resource
        /// name.
        #[arg(long, value_name = "DEST")]
        to: String,
        #[command(flatten)]
        at: AtArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Connection events stored by the controller: the newest matching ones (at most
    /// --limit), printed oldest first; `--follow` then streams new ones until Ctrl-C.
    ///
    /// A malformed filter (`--host web`, `--event denied`, `--verdict allowed`, a bad
    /// `--since`) is a usage error (exit 2), never an empty answer.
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
        /// At most this many: the newest N matching events, still printed oldest first
        /// (1 to 10000; default 10000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
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
        /// At most this many: the newest in the range, printed oldest first (the controller
        /// caps at 10000).
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
    /// JSON: `{"agents": [{"agent_id", "host", "hostname", "connected", "controller" (the
    /// listen address of the controller its stream is on), "acked_generation", "acked" and
    /// "acked_unix_ms" (when it acknowledged it; null / 0: not yet), "current_generation",
    /// "in_sync", "last_seen", "last_seen_unix_ms", "enrolled",
    /// "enrolled_unix_ms", "public_key"}]}`.
    Agents {
        #[command(flatten)]
        output: OutputArg,
    },
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
    /// Log in as an admin user with password and TOTP code. The session token is stored in
    /// the context in use (see `gatewayctl config`), used instead of its API key until
    /// `logout`; without a context it is printed, to use as `GATEWAYCTL_API_KEY`. It
    /// expires after the controller's --session-ttl.
    ///
    /// JSON: `{"context", "role", "expires"}` when stored, else `{"session_token", "role",
    /// "expires"}`.
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
    /// Create a one-time enrollment token for an agent (printed once, on stdout).
    ///
    /// JSON: `{"token", "host", "expires", "expires_unix_ms"}`.
    EnrollToken {
        /// The host the agent enforces for: `connector:NAME` or `device:NAME`.
        #[arg(long, value_name = "HOST")]
        host: String,
        /// How long the token is valid: `90s`, `30m`, `1h`, `7d` (at most 365d, longer is
        /// refused).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = token_ttl_arg)]
        ttl: u64,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show what applying a policy file would change, without applying it.
    ///
    /// The controller plans the file against its live policy (a dry run of `apply`) and
    /// the plan is printed, changed fields included. Exit codes differ from the other
    /// commands, like diff(1): 0 no changes, 1 changes, 2 errors (an invalid policy, a
    /// refused request, usage or I/O errors, an unreachable controller).
    ///
    /// JSON: `{"changes", "plan": {...}}` (the plan as in `apply --help`).
    Diff {
        /// Policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print the controller's live policy as a TOML file that `apply` takes back
    /// unchanged (applying it plans no changes).
    ///
    /// The objects are written in policy order. The comments of the last applied file
    /// are kept: those above each object, and those inside an object's table while the
    /// object is unchanged since; an object created or edited since (`create`, `update`)
    /// is written as its canonical table. The first lines are a comment naming the
    /// revision.
    Export {
        /// Write to FILE instead of stdout (replaced atomically).
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The configuration file's contexts: which controller, CA and credential the remote
    /// commands use.
    ///
    /// Each setting comes from its flag, else its environment variable, else the context
    /// (--context, else the current one), else the default. A context's CA and credential
    /// are sent only to its own controller. The file is written with mode 0600; a file
    /// (or --api-key-file) holding a credential that others may read is refused.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Interactive admin users (password + TOTP): create, list, delete, reset-totp. Admin
    /// only.
    #[command(subcommand)]
    Users(UsersCmd),
    /// The controller's kept policy revisions (the last 100): list them, print one, or
    /// diff two.
    #[command(subcommand)]
    Revisions(RevisionsCmd),
    /// Change your own password (logged in with `gatewayctl login`): asks the old one and
    /// the new one twice. Your other sessions end; this one stays.
    ///
    /// JSON: `{"sessions_ended"}`.
    Passwd {
        /// Read the old and the new password from the first two lines of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// End the session of `gatewayctl login` on the controller and remove its token from
    /// the context (its API key, if any, stays).
    ///
    /// JSON: `{"session_ended", "removed_from_context"}`.
    Logout {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print a shell completion script for gatewayctl on stdout.
    ///
    /// bash: `gatewayctl completions bash > /etc/bash_completion.d/gatewayctl`; zsh: into
    /// a folder of `$fpath` as `_gatewayctl`; fish: `~/.config/fish/completions/`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (gatewayctl.1 and one per subcommand) into DIR
    /// (`cargo xtask man` writes every binary's into target/man).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Create a context or change it; the first context becomes the current one.
    ///
    /// The URL is --controller (needed for a new context), the CA --ca (stored as an
    /// absolute path); the credential, an API key, from --api-key-file (mode 0600) or
    /// --api-key-stdin. Settings not given are kept.
    SetContext {
        name: String,
        /// Read the API key from this file (first line; refused if others may read it).
        #[arg(long, value_name = "FILE", conflicts_with = "api_key_stdin")]
        api_key_file: Option<PathBuf>,
        /// Read the API key from the first line of standard input.
        #[arg(long)]
        api_key_stdin: bool,
    },
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts (the current one marked `*`); credentials are never shown, only
    /// their kind.
    ///
    /// JSON: `{"current_context", "contexts": [{"name", "current", "controller", "ca",
    /// "credential"}]}` (`credential`: `api key`, `session`, `api key, session`, `none`).
    GetContexts {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print the current context's name (exit 1 when none is set).
    CurrentContext,
    /// Remove a context (and its credential); unsets current-context if it was current.
    DeleteContext { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RevisionsCmd {
    /// The kept revisions, newest first: number, when, who, which change, size.
    ///
    /// JSON: `{"current", "revisions": [{"revision", "time", "time_unix_ms", "actor",
    /// "action", "bytes"}]}`.
    List {
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only revisions below this one (paging).
        #[arg(long, value_name = "REVISION")]
        before: Option<u64>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print the policy text at a revision (as `export` printed it then).
    Show {
        /// The revision number.
        revision: u64,
    },
    /// A unified diff of the policy text from revision FROM to revision TO (default: the
    /// current one). Exit 0 no difference, 1 differences, 2 errors (like diff(1)).
    Diff {
        /// The older revision.
        from: u64,
        /// The newer revision (default: the current one).
        to: Option<u64>,
        /// Lines of context around each change.
        #[arg(
            long = "unified",
            short = 'U',
            value_name = "LINES",
            default_value_t = 3
        )]
        lines: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Create an admin user: the password is asked twice (or read with
    /// --password-stdin); the TOTP secret and its `otpauth://` URI are printed once, to
    /// load into an authenticator app.
    ///
    /// JSON: `{"name", "role", "totp_secret", "otpauth_uri"}`.
    Create {
        /// 1 to 64 letters, digits, `-_.@`.
        name: String,
        /// `admin`, `operator` or `auditor`.
        #[arg(long, value_parser = ["admin", "operator", "auditor"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Admin users: name, role, created.
    ///
    /// JSON: `{"users": [{"name", "role", "created"}]}`.
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a user: their sessions end and the API keys they created are revoked.
    Delete {
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Give a user a new TOTP secret (printed once) for a lost authenticator; their
    /// sessions end. Audit-logged.
    ///
    /// JSON: `{"name", "totp_secret", "otpauth_uri", "sessions_ended"}`.
    ResetTotp {
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

fn kind_arg(s: &str) -> Result<ObjectKind, String> {
    parse_kind(s)
}

fn key_ttl_arg(s: &str) -> Result<u64, String> {
    parse_duration_at_most(s, MAX_KEY_TTL_SECS)
}

fn token_ttl_arg(s: &str) -> Result<u64, String> {
    parse_duration_at_most(s, MAX_TOKEN_TTL_SECS)
}

#[derive(Args, Debug)]
pub struct ConfirmArgs {
    /// Apply without asking for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    /// Only show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Make the change even when [[test]] blocks fail: `apply`, when the policy's own
    /// tests fail; `create`, `update`, `delete`, when the change makes tests fail that
    /// pass today. The failing tests are listed in the plan's warnings and the audit trail
    /// records the action with `_skip_tests`.
    #[arg(long)]
    pub skip_tests: bool,
}

#[derive(Args, Debug)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct AtArg {
    /// Evaluate at this instant (RFC 3339, e.g. `2030-01-01T00:00:00Z`) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
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
        /// a DNS name in place of the address (`db.prod.internal:5432/tcp`), or a resource
        /// name (its address or name, and first port).
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

/// The output format of a remote command (for reporting its failure).
pub fn remote_output(c: &Command) -> Option<Output> {
    Some(
        match c {
            Command::Policy(_) | Command::Completions { .. } | Command::Man { .. } => return None,
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
            | Command::EnrollToken { output, .. }
            | Command::Diff { output, .. }
            | Command::Users(
                UsersCmd::Create { output, .. }
                | UsersCmd::List { output }
                | UsersCmd::Delete { output, .. }
                | UsersCmd::ResetTotp { output, .. },
            )
            | Command::Passwd { output, .. }
            | Command::Logout { output } => output,
            Command::Revisions(RevisionsCmd::List { output, .. }) => output,
            Command::Config(_) => return None,
            Command::Revisions(_) => return Some(Output::Text),
            Command::Export { .. } => return Some(Output::Text),
        }
        .output,
    )
}
