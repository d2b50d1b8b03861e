//! The lab's operator and agents as child processes: started from the
//! `kube-nft` binary, their output in a log file each, restarted when they
//! exit (as the kubelet restarts a container), killed on every way out of
//! the run: dropped on return or error, and from the Ctrl-C/SIGTERM handler
//! through [`kill_registered`], which also removes the run's private
//! directories (they hold the components' tokens).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// PIDs of every live child of this process's labs, for the signal handler.
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Private directories of this process's labs, for the signal handler.
static DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn children() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

fn dirs() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    DIRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills every child a lab of this process started and has not reaped yet,
/// and removes the labs' private directories. For the signal handler, which
/// exits without running destructors.
pub fn kill_registered() {
    for pid in children().iter() {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for dir in dirs().iter() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A private directory (mode 0700), removed when dropped or by
/// [`kill_registered`].
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Creates `$TMPDIR/name`, replacing what a crashed run left there.
    pub fn new(name: &str) -> anyhow::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        dirs().insert(path.clone());
        Ok(PrivateDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        dirs().remove(&self.0);
    }
}

/// One component: how to start it, and the running process.
struct Component {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    restarts: usize,
}

/// A component that exited on its own.
#[derive(Debug)]
pub struct Exit {
    pub name: String,
    pub status: ExitStatus,
    pub restarts: usize,
    /// The end of its log.
    pub tail: String,
}

/// The running components of one lab.
pub struct Processes {
    binary: PathBuf,
    components: Vec<Component>,
}

impl Processes {
    pub fn new(binary: PathBuf) -> Processes {
        Processes {
            binary,
            components: Vec::new(),
        }
    }

    /// Starts `binary ARGS` as `name`, output appended to `log`.
    pub fn spawn(&mut self, name: &str, args: Vec<String>, log: PathBuf) -> anyhow::Result<()> {
        let mut component = Component {
            name: name.to_string(),
            args,
            log,
            child: None,
            restarts: 0,
        };
        start(&self.binary, &mut component)?;
        self.components.push(component);
        Ok(())
    }

    fn find(&mut self, name: &str) -> anyhow::Result<usize> {
        self.components
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| anyhow!("the lab runs no {name}"))
    }

    /// Kills `name` with SIGKILL (as `kill -9`) and reaps it.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.find(name)?;
        stop(&mut self.components[i]);
        Ok(())
    }

    /// Starts `name` again after [`Self::kill`] (a no-op while it runs).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.find(name)?;
        let c = &mut self.components[i];
        if c.child.is_some() {
            return Ok(());
        }
        start(&self.binary, c)
    }

    /// Components that exited since the last call, each started again (up
    /// to `max_restarts` times; past that it stays down and is reported
    /// with `restarts > max_restarts`).
    pub fn reap_and_restart(&mut self, max_restarts: usize) -> Vec<Exit> {
        let mut exits = Vec::new();
        for c in &mut self.components {
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            children().remove(&child.id());
            c.child = None;
            c.restarts += 1;
            exits.push(Exit {
                name: c.name.clone(),
                status,
                restarts: c.restarts,
                tail: tail(&c.log, 20),
            });
            if c.restarts <= max_restarts {
                if let Err(e) = start(&self.binary, c) {
                    tracing::warn!(component = %c.name, error = %e, "could not restart");
                }
            }
        }
        exits
    }

    /// The last `lines` lines of `name`'s log.
    pub fn tail(&self, name: &str, lines: usize) -> String {
        self.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| tail(&c.log, lines))
            .unwrap_or_default()
    }

    /// Every component's name and log tail, for an error report.
    pub fn tails(&self, lines: usize) -> String {
        self.components
            .iter()
            .map(|c| {
                format!(
                    "--- {} ({}) ---\n{}",
                    c.name,
                    c.log.display(),
                    tail(&c.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills every component.
    pub fn stop_all(&mut self) {
        for c in &mut self.components {
            stop(c);
        }
    }
}

fn start(binary: &Path, c: &mut Component) -> anyhow::Result<()> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(&c.log)
        .with_context(|| format!("opening {}", c.log.display()))?;
    let err = out.try_clone().context("duplicating a log file handle")?;
    let child = Command::new(binary)
        .args(&c.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting the {} ({})", c.name, binary.display()))?;
    children().insert(child.id());
    c.child = Some(child);
    Ok(())
}

fn stop(c: &mut Component) {
    if let Some(mut child) = c.child.take() {
        let _ = child.kill();
        let _ = child.wait();
        children().remove(&child.id());
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The last `lines` lines of a file (at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("kube-nft-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        assert_eq!(tail(&dir.join("missing"), 3), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_component_that_exits_is_restarted_and_reported() {
        let dir = std::env::temp_dir().join(format!("kube-nft-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut procs = Processes::new(PathBuf::from("/bin/sh"));
        procs
            .spawn(
                "quitter",
                vec!["-c".into(), "echo bye; exit 3".into()],
                dir.join("q.log"),
            )
            .unwrap();
        let mut exits = Vec::new();
        for _ in 0..200 {
            exits.extend(procs.reap_and_restart(0));
            if !exits.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].name, "quitter");
        assert_eq!(exits[0].status.code(), Some(3));
        assert_eq!(exits[0].tail, "bye");
        assert_eq!(exits[0].restarts, 1, "past max_restarts: stays down");
        assert!(procs.reap_and_restart(0).is_empty());
        assert!(procs.kill("nobody").is_err());
        drop(procs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
