//! `gateway-agent` run as a process inside a network namespace, supervised the same way by
//! the tests and the demo: started with its stderr appended to a file (restarts keep the
//! history), waited on with bounds (a process that exits early is an error carrying its
//! stderr), stopped with SIGTERM then SIGKILL, and detached when dropped so that a failed
//! run leaves no program attached and nothing pinned.

use anyhow::{Context as _, Result, bail};
use std::{
    fs::OpenOptions,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);
/// How long a stopped agent gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running `gateway-agent run --config …` in a namespace.
#[derive(Debug)]
pub struct AgentProcess {
    label: String,
    ns: String,
    bin: PathBuf,
    config: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    /// `ready:` lines in the stderr file before this process started.
    readies_before: usize,
    /// Set once `detach` ran, or when the pins are meant to outlive this process.
    detached: bool,
}

impl AgentProcess {
    /// Starts `bin run --config config` in namespace `ns`; stderr is appended to `stderr`,
    /// stdout is discarded. Returns at once: use [`AgentProcess::wait_ready`].
    pub fn start(label: &str, ns: &str, bin: &Path, config: &Path, stderr: &Path) -> Result<Self> {
        let readies_before = read(stderr).matches("ready:").count();
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .with_context(|| format!("opening {}", stderr.display()))?;
        let child = crate::netns::command_in(ns, bin)?
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} run in {ns}", bin.display()))?;
        Ok(AgentProcess {
            label: label.to_string(),
            ns: ns.to_string(),
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            stderr: stderr.to_path_buf(),
            child: Some(child),
            readies_before,
            detached: false,
        })
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the agent (and earlier runs with the same file) wrote to stderr.
    pub fn stderr(&self) -> String {
        read(&self.stderr)
    }

    /// The last `lines` lines of stderr, indented for a report.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines)
    }

    /// How many times stderr says `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    /// Waits (bounded) until `cond` holds; fails if the agent exits first or time runs out.
    /// `abort` runs on every poll and can end the wait early (an interrupted demo).
    pub fn wait_until_or(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
        mut abort: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            abort()?;
            if cond(self) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "agent {} exited ({st}) while waiting for {what}; its stderr:\n{}",
                    self.label,
                    self.stderr_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {}: no {what} after {timeout:?}; its stderr:\n{}",
                    self.label,
                    self.stderr_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`AgentProcess::wait_until_or`] without an abort hook.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        self.wait_until_or(what, timeout, cond, || Ok(()))
    }

    /// Waits until stderr says `needle` at least `n` times in all.
    pub fn wait_for_count(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("{n}× {needle:?}"), timeout, |a| {
            a.count(needle) >= n
        })
    }

    /// Waits until stderr says `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_count(needle, 1, timeout)
    }

    /// Waits for this run's `ready:` line; returns it.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        self.wait_ready_or(timeout, || Ok(()))
    }

    /// [`AgentProcess::wait_ready`] with an abort hook.
    pub fn wait_ready_or(
        &mut self,
        timeout: Duration,
        abort: impl FnMut() -> Result<()>,
    ) -> Result<String> {
        let n = self.readies_before + 1;
        self.wait_until_or("ready: line", timeout, |a| a.count("ready:") >= n, abort)?;
        let text = self.stderr();
        let line = text
            .lines()
            .filter(|l| l.contains("ready:"))
            .nth(self.readies_before)
            .unwrap_or_default();
        Ok(line[line.find("ready:").unwrap_or(0)..].to_string())
    }

    /// `gateway-agent status --output <output>` in the agent's namespace.
    pub fn status(&self, output: &str) -> Result<Output> {
        let mut cmd = crate::netns::command_in(&self.ns, &self.bin)?;
        cmd.arg("status")
            .arg("--config")
            .arg(&self.config)
            .args(["--output", output]);
        run_bounded(cmd, Duration::from_secs(10))
    }

    /// SIGTERM, then SIGKILL after a grace period. Says how the process ended; an exit
    /// other than a clean one on SIGTERM is an error.
    pub fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("already gone".into());
        };
        if let Some(st) = child.try_wait()? {
            return Ok(format!("had already exited ({st})"));
        }
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(st) = child.try_wait()? {
                return if st.success() {
                    Ok("exited on SIGTERM".into())
                } else {
                    bail!("exited with {st} on SIGTERM")
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not exit within {STOP_GRACE:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for an agent that is expected to refuse to start, and returns how it
    /// exited. Its pins are not its own (another agent's), so dropping it never detaches;
    /// one still running at the deadline is killed and the wait fails.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.detached = true;
        let Some(mut child) = self.child.take() else {
            bail!("agent {} was not started", self.label);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "agent {} still running after {timeout:?} (killed); its stderr:\n{}",
                    self.label,
                    self.stderr_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL (a crash, as far as the agent can tell), reaped. The pins stay: dropping
    /// this value afterwards does not detach, so a new agent can re-adopt them.
    pub fn crash(mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        self.detached = true;
    }

    /// SIGTERM (then SIGKILL), like [`AgentProcess::stop`], but the pins stay for the next
    /// agent to re-adopt: dropping this value afterwards does not detach.
    pub fn stop_keeping_pins(mut self) -> Result<String> {
        self.detached = true;
        self.stop()
    }

    /// `gateway-agent detach` in the agent's namespace; returns what it says it removed.
    pub fn detach(&mut self) -> Result<Vec<String>> {
        self.detached = true;
        let mut cmd = crate::netns::command_in(&self.ns, &self.bin)?;
        cmd.arg("detach").arg("--config").arg(&self.config);
        let out = run_bounded(cmd, Duration::from_secs(15))?;
        if !out.status.success() {
            bail!(
                "detach failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("warning: stopping agent {}: {e:#}", self.label);
        }
        if !self.detached
            && let Err(e) = self.detach()
        {
            eprintln!("warning: detaching agent {}: {e:#}", self.label);
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `lines` lines of a file, indented for a report.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = read(path);
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("           | {l}\n"))
        .collect()
}

/// Runs a command to completion with its output captured, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}
