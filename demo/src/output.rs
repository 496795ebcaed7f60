//! Progress lines, Ctrl-C, the check list and the record of what the run created.

use crate::prelude::*;

pub(crate) static START: OnceLock<Instant> = OnceLock::new();
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

macro_rules! progress {
    ($($arg:tt)*) => {
        println!("[{:5.1}s] {}", elapsed(), format!($($arg)*))
    };
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(crate) fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) on Ctrl-C.
pub(crate) fn sleep(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Expectation results: every check is printed when it fails and counted.
#[derive(Default)]
pub(crate) struct Checks {
    pub(crate) passed: usize,
    pub(crate) failed: Vec<String>,
}

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if ok {
            self.passed += 1;
        } else {
            let what = what.into();
            println!("         FAIL: {what}");
            self.failed.push(what);
        }
        ok
    }
}

/// What the run created, for the final leftover check (filled as things are created).
#[derive(Default)]
pub(crate) struct Created {
    pub(crate) namespaces: Vec<String>,
    pub(crate) interfaces: Vec<String>,
    pub(crate) pin_dirs: Vec<PathBuf>,
    pub(crate) pids: Vec<u32>,
    pub(crate) temp_dir: Option<PathBuf>,
    pub(crate) keep_temp: bool,
}
