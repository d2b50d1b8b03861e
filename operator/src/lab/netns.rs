//! Named network namespaces and the lifetime of a lab run.
//!
//! Namespaces are `ip netns` namespaces (`/run/netns/NAME`) so people can poke at
//! a running lab with `ip netns exec`. Code runs inside one on a fresh helper
//! thread that `setns`es and then ends, so no caller thread (and no tokio worker)
//! ever changes namespace. A socket stays in the namespace it was created in, so
//! the helper creates sockets and hands them back to the caller.
//!
//! Every run owns a prefix (`kn-<6 hex>`) and records its owner (PID + process
//! start time, so a recycled PID is not mistaken for the owner) in
//! `/run/kube-nft-lab/<prefix>.owner` *before* creating any namespace: a namespace
//! whose owner file is missing or names a dead process is a crashed run's leftover.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::thread;

use nix::sched::{setns, CloneFlags};

use super::naming::{self, prefix_of};
use super::{LabError, Result};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Where lab runs record their owning process.
pub const OWNER_DIR: &str = "/run/kube-nft-lab";

/// A named network namespace (`/run/netns/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    fn open(&self) -> Result<File> {
        File::open(self.path())
            .map_err(|e| LabError::io(format!("opening network namespace {}", self.name), e))
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its value
    /// (sockets created by `f` stay in this namespace). Blocks the caller; a
    /// panic in `f` is re-raised here.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let handle = self.open()?;
        let entered = thread::scope(|scope| {
            let helper = scope.spawn(move || enter(&handle).map(|()| f()));
            helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        entered.map_err(|e| LabError::io(format!("entering network namespace {}", self.name), e))
    }

    /// [`Netns::run`] for async callers: the helper thread is awaited, not joined,
    /// so the runtime's thread keeps serving other tasks meanwhile.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let handle = self.open()?;
        let (done, result) = tokio::sync::oneshot::channel();
        thread::spawn(move || {
            let outcome =
                enter(&handle).map(|()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            // The receiver is gone only if the caller's future was dropped.
            let _ = done.send(outcome);
        });
        match result.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => Err(LabError::io(
                format!("entering network namespace {}", self.name),
                e,
            )),
            Err(_) => Err(LabError::io(
                format!("helper thread in network namespace {}", self.name),
                io::Error::other("thread ended without an answer"),
            )),
        }
    }

    /// Writes `/proc/sys/<key>` values inside this namespace (net sysctls are
    /// per namespace and resolved against the writing thread's namespace).
    pub fn write_sysctls(&self, settings: &[(String, &str)]) -> Result<()> {
        let name = self.name.clone();
        self.run(move || {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key);
                fs::write(&path, value).map_err(|e| {
                    LabError::io(format!("sysctl {key}={value} in namespace {name}"), e)
                })?;
            }
            Ok(())
        })?
    }
}

fn enter(handle: &File) -> io::Result<()> {
    setns(handle, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// One `ip -b -` invocation: `netns: None` runs in the caller's (root)
/// namespace and is used only for `netns add/del`, which touch no interface.
#[derive(Debug, Clone)]
pub(crate) struct IpBatch {
    pub netns: Option<String>,
    pub commands: Vec<String>,
    /// Keep going after a failing command (`ip -force`), for best-effort teardown.
    pub force: bool,
}

/// Runs the batches concurrently (one `ip` process each) and reports the first
/// failure, naming the failing command.
pub(crate) fn run_ip_batches(batches: &[IpBatch]) -> Result<()> {
    let mut running = Vec::with_capacity(batches.len());
    for batch in batches {
        if batch.commands.is_empty() {
            continue;
        }
        let mut command = Command::new("ip");
        if batch.force {
            command.arg("-force");
        }
        if let Some(netns) = &batch.netns {
            command.args(["-n", netns]);
        }
        let mut child = command
            .args(["-b", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io("running `ip` (is iproute2 installed?)", e))?;
        let mut script = batch.commands.join("\n");
        script.push('\n');
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| LabError::io("writing an `ip` batch", e))?;
        drop(stdin);
        running.push((batch, child));
    }
    let mut first_error = None;
    for (batch, child) in running {
        let output = child
            .wait_with_output()
            .map_err(|e| LabError::io("waiting for `ip`", e))?;
        if !output.status.success() && first_error.is_none() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            first_error = Some(LabError::IpBatch {
                netns: batch.netns.clone().unwrap_or_else(|| "-".into()),
                status: output.status.to_string(),
                stderr: describe_batch_failure(&stderr, &batch.commands),
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `ip -b` reports `Command failed -:LINE`; put the command itself next to it.
fn describe_batch_failure(stderr: &str, commands: &[String]) -> String {
    let failed_line = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    let stderr = stderr.trim();
    match failed_line.and_then(|n| commands.get(n.checked_sub(1)?)) {
        Some(command) => format!("{stderr} (command: `{command}`)"),
        None => stderr.to_string(),
    }
}

/// Creates the named namespaces (`ip netns add`) and returns their handles.
pub(crate) fn add_namespaces(names: &[String]) -> Result<Vec<Netns>> {
    run_ip_batches(&[IpBatch {
        netns: None,
        commands: names.iter().map(|n| format!("netns add {n}")).collect(),
        force: false,
    }])?;
    Ok(names.iter().map(Netns::new).collect())
}

/// Names under /run/netns (empty when the directory does not exist yet).
fn listed_namespaces() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("listing {NETNS_DIR}"), e)),
    };
    Ok(entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect())
}

/// Existing namespaces of the run with this prefix.
pub fn namespaces_of(prefix: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = listed_namespaces()?
        .into_iter()
        .filter(|name| prefix_of(name) == Some(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes every namespace of the run (their veths go with them) and its owner
/// file; returns the deleted namespace names.
fn remove_lab(prefix: &str) -> Result<Vec<String>> {
    let names = namespaces_of(prefix)?;
    let deleted = run_ip_batches(&[IpBatch {
        netns: None,
        commands: names.iter().map(|n| format!("netns del {n}")).collect(),
        force: true,
    }]);
    match fs::remove_file(owner_file(prefix)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(LabError::io(
                format!("removing the owner file of {prefix}"),
                e,
            ))
        }
        _ => {}
    }
    deleted.map(|()| names)
}

fn owner_file(prefix: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{prefix}.owner"))
}

/// The owner record: `<pid> <start time in clock ticks>`.
fn format_owner(pid: u32, start_time: u64) -> String {
    format!("{pid} {start_time}\n")
}

fn parse_owner(record: &str) -> Option<(u32, u64)> {
    let mut fields = record.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start_time = fields.next()?.parse().ok()?;
    Some((pid, start_time))
}

/// Field 22 (`starttime`) of `/proc/PID/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

fn owner_alive(prefix: &str) -> bool {
    let Ok(record) = fs::read_to_string(owner_file(prefix)) else {
        return false;
    };
    parse_owner(&record).is_some_and(|(pid, start)| process_start_time(pid) == Some(start))
}

/// Records `pid` as the owner of `prefix`, atomically and only if no run owns the
/// prefix yet (write a temp file, then hard-link it: a concurrent
/// [`cleanup_stale`] never sees a half-written record). `Ok(false)`: taken.
pub fn claim_prefix(prefix: &str, pid: u32) -> Result<bool> {
    fs::create_dir_all(OWNER_DIR).map_err(|e| LabError::io(format!("creating {OWNER_DIR}"), e))?;
    let start_time = process_start_time(pid).ok_or_else(|| {
        LabError::io(
            format!("reading the start time of process {pid}"),
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    let final_path = owner_file(prefix);
    let temp_path = final_path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&temp_path, format_owner(pid, start_time))
        .map_err(|e| LabError::io(format!("writing {}", temp_path.display()), e))?;
    let linked = fs::hard_link(&temp_path, &final_path);
    let _ = fs::remove_file(&temp_path);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(LabError::io(format!("writing {}", final_path.display()), e)),
    }
}

/// Removes the leftovers of crashed runs: namespaces (and owner files) whose
/// owner process is gone. Runs of live processes, including this one, are
/// left alone. Returns the deleted namespace names.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut prefixes: BTreeSet<String> = listed_namespaces()?
        .iter()
        .filter_map(|name| prefix_of(name).map(str::to_string))
        .collect();
    if let Ok(entries) = fs::read_dir(OWNER_DIR) {
        prefixes.extend(entries.filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let prefix = name.strip_suffix(".owner")?;
            (prefix_of(&format!("{prefix}-")) == Some(prefix)).then(|| prefix.to_string())
        }));
    }
    let mut removed = Vec::new();
    for prefix in prefixes.iter().filter(|p| !owner_alive(p)) {
        tracing::info!(prefix, "removing the leftovers of a crashed lab run");
        removed.extend(remove_lab(prefix)?);
    }
    Ok(removed)
}

/// Prefixes of this process's live labs, for the signal handler.
static ACTIVE_LABS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static SIGNAL_CLEANUP: Once = Once::new();

fn active_labs() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // A panic while holding the lock leaves a plain set behind: still usable.
    ACTIVE_LABS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every lab this process still owns. The Ctrl-C/SIGTERM handler calls
/// it; a program with its own signal handling calls it before exiting.
pub fn remove_active_labs() {
    let prefixes: Vec<String> = active_labs().iter().cloned().collect();
    for prefix in prefixes {
        if let Err(e) = remove_lab(&prefix) {
            tracing::warn!(prefix, error = %e, "could not remove lab");
        }
        active_labs().remove(&prefix);
    }
}

fn install_signal_cleanup() {
    SIGNAL_CLEANUP.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            // The operator and agents of `lab run --kubeconfig` first: they
            // hold the namespaces open.
            super::apiserver::procs::kill_registered();
            remove_active_labs();
            // 128 + SIGINT, what a shell reports for an interrupted command.
            std::process::exit(130);
        });
        if let Err(e) = installed {
            tracing::warn!(
                error = %e,
                "no Ctrl-C cleanup for lab namespaces; call remove_active_labs() on exit"
            );
        }
    });
}

/// Owns one lab run: its prefix and everything created under it. Dropping it
/// (or Ctrl-C/SIGTERM while it lives) deletes all the run's namespaces.
///
/// Drop listeners (which hold sockets inside pod namespaces) before the guard:
/// a namespace with open sockets outlives its `/run/netns` name until they close.
#[derive(Debug)]
pub struct LabGuard {
    prefix: String,
    /// Cleared by [`LabGuard::remove`], which already did the drop's work.
    armed: bool,
}

impl LabGuard {
    /// Claims a fresh random prefix for this process and arms signal cleanup.
    pub fn new() -> Result<LabGuard> {
        install_signal_cleanup();
        for _ in 0..16 {
            let prefix = naming::run_prefix(random_bytes()?);
            if !namespaces_of(&prefix)?.is_empty() {
                continue;
            }
            if claim_prefix(&prefix, std::process::id())? {
                active_labs().insert(prefix.clone());
                return Ok(LabGuard {
                    prefix,
                    armed: true,
                });
            }
        }
        Err(LabError::io(
            "choosing a lab prefix",
            io::Error::other("16 random prefixes were all taken"),
        ))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The run's namespaces that exist right now.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        namespaces_of(&self.prefix)
    }

    /// Removes everything now (what drop does), reporting failures.
    pub fn remove(mut self) -> Result<Vec<String>> {
        self.armed = false;
        let removed = remove_lab(&self.prefix);
        active_labs().remove(&self.prefix);
        removed
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = remove_lab(&self.prefix) {
            tracing::warn!(prefix = %self.prefix, error = %e, "could not remove lab");
        }
        active_labs().remove(&self.prefix);
    }
}

fn random_bytes() -> Result<[u8; 3]> {
    let mut bytes = [0; 3];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_record_round_trips() {
        assert_eq!(parse_owner(&format_owner(42, 123456)), Some((42, 123456)));
        assert_eq!(parse_owner(""), None);
        assert_eq!(parse_owner("42"), None);
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start_time(stat), Some(987654));
        assert_eq!(parse_stat_start_time("garbage"), None);
    }

    #[test]
    fn this_process_has_a_start_time() {
        assert!(process_start_time(std::process::id()).is_some());
    }

    #[test]
    fn batch_failure_names_the_command() {
        let commands = vec!["link set lo up".to_string(), "route add x".to_string()];
        let message = describe_batch_failure("Error: bad\nCommand failed -:2\n", &commands);
        assert!(message.contains("`route add x`"), "{message}");
    }
}
