//! A real Kubernetes control plane for the cluster-mode suites.
//!
//! By default each [`ControlPlane`] is its own etcd + kube-apiserver (+
//! kube-controller-manager) v1.20.2 on loopback, started by
//! `scripts/apiserver-run` in a fresh directory and stopped when dropped (also
//! when the test panics). The binaries come from `scripts/apiserver-build`'s
//! cache; `scripts/test` builds them first.
//!
//! With `KUBE_NFT_TEST_KUBECONFIG=FILE` the suites run against that cluster
//! instead (e.g. a newer server, where v1.20's gaps no longer apply); nothing
//! is started or stopped then, and tests that need to stop the API server skip.
//!
//! Include with `#[path = "common/control_plane.rs"] mod control_plane;`.
#![allow(dead_code)] // each suite uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives inside the workspace")
        .to_path_buf()
}

/// A running control plane (or a given cluster); see the module doc.
pub struct ControlPlane {
    /// The state directory of an owned control plane; `None` for a given cluster.
    dir: Option<PathBuf>,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane with a controller-manager (EndpointSlices, service
    /// account tokens), or returns the given cluster.
    pub fn start() -> ControlPlane {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start) with extra `scripts/apiserver-run start` flags
    /// (e.g. `--no-controller-manager`).
    pub fn start_with(flags: &[&str]) -> ControlPlane {
        if let Some(kc) = std::env::var_os("KUBE_NFT_TEST_KUBECONFIG") {
            return ControlPlane {
                dir: None,
                kubeconfig: PathBuf::from(kc),
            };
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kube-nft-cp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cp = ControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir: Some(dir),
        };
        cp.script("start", flags);
        cp
    }

    /// True when this suite started the control plane (and so may stop it).
    pub fn is_owned(&self) -> bool {
        self.dir.is_some()
    }

    /// Stops the API server (and the rest) but keeps its state; [`resume`]
    /// starts it again with the same certificates and etcd data.
    ///
    /// [`resume`]: Self::resume
    pub fn pause(&self) {
        self.script("stop", &[]);
    }

    pub fn resume(&self) {
        self.script("start", &[]);
    }

    /// Runs `kubectl --kubeconfig … ARGS`; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl … ARGS` with `stdin` piped in; panics on failure.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` (a
    /// token from the TokenRequest API, valid for an hour), so a process run
    /// with it has exactly the rights RBAC gives that account.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl(&["create", "token", name, "-n", namespace]);
        let field = |path: &str| {
            self.kubectl(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                &format!("jsonpath={path}"),
            ])
        };
        let server = field("{.clusters[0].cluster.server}");
        let ca = field("{.clusters[0].cluster.certificate-authority-data}");
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "kube-nft-sa-{}-{}-{name}.kubeconfig",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}}}]\n\
             users: [{{name: {name}, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: {name}}}}}]\n\
             current-context: x\n",
            token.trim()
        );
        std::fs::write(&path, text).expect("writing a ServiceAccount kubeconfig");
        path
    }

    /// Whether the server serves `group/version` (e.g. `discovery.k8s.io/v1`).
    pub fn serves(&self, group_version: &str) -> bool {
        self.kubectl(&["api-versions"])
            .lines()
            .any(|l| l.trim() == group_version)
    }

    /// Waits (up to a minute) until namespace `ns`'s default ServiceAccount
    /// and, on v1.20, its token exist: until then the ServiceAccount
    /// admission rejects pods in `ns`.
    pub fn wait_for_default_service_account(&self, ns: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = self.kubectl_output(&[
                "get",
                "serviceaccount",
                "default",
                "-n",
                ns,
                "-o",
                "jsonpath={.secrets[0].name}",
            ]);
            if out.status.success() && !out.stdout.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the default ServiceAccount of {ns} did not appear within a minute"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn script(&self, verb: &str, flags: &[&str]) {
        let Some(dir) = &self.dir else { return };
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/apiserver-run"))
            .arg(verb)
            .arg(dir)
            .args(flags)
            .output()
            .expect("running scripts/apiserver-run");
        assert!(
            out.status.success(),
            "scripts/apiserver-run {verb} failed (is the API server built? run scripts/apiserver-build): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new("bash")
                .arg(workspace_root().join("scripts/apiserver-run"))
                .arg("stop")
                .arg(dir)
                .output();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
