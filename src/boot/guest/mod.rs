//! What `diskc boot` and `diskc-init` agree on for one boot, beside the kernel command line:
//! the virtio-serial ports that carry the run settings, the program's stdio and its exit
//! status, the addresses of QEMU's user-mode network, and the [`RunConfig`] itself.
//!
//! Every channel is a named virtio-serial port rather than the serial console, so that what
//! the program prints can never be mistaken for a message of the init: the exit status in
//! particular travels on a port only `diskc-init` opens (the kernel lets one process at a
//! time hold a port open, and the init keeps it from the program with `O_CLOEXEC`). The
//! console carries only kernel messages and the init's own warnings and errors.
//!
//! [`net`] is the guest side of the network setup, used by `diskc-init` only.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::manifest::ImageConfig;

pub mod net;

/// Host to guest: the [`RunConfig`] as one line of JSON; guest to host: one byte once the
/// init is ready for stdin (see `run::spawn_input` for why).
pub const PORT_RUN: &str = "org.diskc.run";
/// Host to guest: the program's stdin (only with `diskc boot -i`; otherwise it is /dev/null).
pub const PORT_STDIN: &str = "org.diskc.stdin";
/// Guest to host: the program's stdout.
pub const PORT_STDOUT: &str = "org.diskc.stdout";
/// Guest to host: the program's stderr.
pub const PORT_STDERR: &str = "org.diskc.stderr";
/// Guest to host: one line, the exit-status line or `diskc-init: error: ...`.
pub const PORT_STATUS: &str = "org.diskc.status";

/// The prefix of the line on [`PORT_STATUS`] when the init failed before the program ran.
pub const ERROR_PREFIX: &str = "diskc-init: error: ";

/// The guest's hostname unless `diskc boot --hostname` says otherwise.
pub const DEFAULT_HOSTNAME: &str = "diskc";

/// Docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// QEMU's user-mode network (`-netdev user`) fixes these: the guest's address in
/// 10.0.2.0/24, the host (and gateway) at .2, the DNS forwarder at .3 (QEMU's
/// documentation of `-netdev user`, options `net`, `host` and `dns`).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const NETWORK_PREFIX_LEN: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const NAMESERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// The virtiofs tag of the `n`th volume.
pub fn volume_tag(n: usize) -> String {
    format!("diskc-vol{n}")
}

/// A host directory the guest mounts (virtiofs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    /// The virtiofs tag QEMU gives the device.
    pub tag: String,
    /// Absolute path in the guest.
    pub target: String,
    pub read_only: bool,
}

/// This boot's settings, which `docker run` would take as flags: they override the image
/// config the initrd carries, as [`RunConfig::apply`] defines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Replaces the image's CMD (`docker run IMAGE CMD...`); any bytes but NUL.
    pub cmd: Option<Vec<Vec<u8>>>,
    /// `--entrypoint`: `Some(vec![])` for `--entrypoint ""`.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value`, applied over the image's ENV in order (`--env-file`, then `-e`).
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
    pub hostname: String,
    /// Configure the virtio NIC of QEMU's user-mode network.
    pub network: bool,
    /// The program's stdin is [`PORT_STDIN`] (else /dev/null).
    pub stdin: bool,
    pub volumes: Vec<GuestMount>,
    /// The block device holding the kernel's `lib/modules/<version>` tree, when attached.
    pub modules_device: Option<String>,
}

/// What the init runs: the image config with a boot's overrides applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub argv: Vec<Vec<u8>>,
    /// `KEY=value`: the overrides, then the image's ENV of the keys they leave alone.
    pub env: Vec<String>,
    /// Empty means `/`.
    pub workdir: String,
    /// Empty means root.
    pub user: String,
}

impl RunConfig {
    /// Applies the overrides as Docker does: a non-empty `--entrypoint` drops the image's
    /// CMD (only the given command follows it); `--entrypoint ""` clears the ENTRYPOINT and
    /// keeps CMD; the `-e` entries come first and the image's ENV of other keys after them
    /// (the order `env` shows in a container).
    pub fn apply(&self, image: &ImageConfig) -> Effective {
        let bytes = |v: &[String]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let entrypoint = self.entrypoint.as_deref().unwrap_or(&image.entrypoint);
        let cmd = match (&self.cmd, &self.entrypoint) {
            (Some(cmd), _) => cmd.clone(),
            (None, Some(e)) if !e.is_empty() => Vec::new(),
            (None, _) => bytes(&image.cmd),
        };
        let mut argv = bytes(entrypoint);
        argv.extend(cmd);
        let mut env = self.env.clone();
        env.extend(image.env.iter().filter(|e| !self.env.iter().any(|u| env_key(u) == env_key(e))).cloned());
        Effective {
            argv,
            env,
            workdir: self.workdir.clone().unwrap_or_else(|| image.working_dir.clone()),
            user: self.user.clone().unwrap_or_else(|| image.user.clone()),
        }
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// The program's environment, composed as Docker composes a container's: its default PATH
/// and HOSTNAME first, each entry of `env` replacing the value of its key in place or
/// appended, and HOME (the user's) when none of them set it.
pub fn program_env(env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut out = vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}")];
    for entry in env {
        match out.iter_mut().find(|e| env_key(e) == env_key(entry)) {
            Some(slot) => slot.clone_from(entry),
            None => out.push(entry.clone()),
        }
    }
    if !out.iter().any(|e| env_key(e) == "HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["A=1".into(), "B=2".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
            ..Default::default()
        }
    }

    fn argv(e: &Effective) -> Vec<String> {
        e.argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    #[test]
    fn without_overrides_the_image_runs_as_configured() {
        let e = RunConfig::default().apply(&image());
        assert_eq!(argv(&e), ["/entry", "default"]);
        assert_eq!((e.workdir.as_str(), e.user.as_str()), ("/srv", "app"));
        assert_eq!(e.env, ["A=1", "B=2"]);
    }

    #[test]
    fn entrypoint_overrides_follow_docker() {
        let run = |entrypoint: Option<Vec<String>>, cmd: Option<Vec<Vec<u8>>>| {
            argv(&RunConfig { entrypoint, cmd, ..Default::default() }.apply(&image()))
        };
        // A new ENTRYPOINT drops the image's CMD.
        assert_eq!(run(Some(vec!["/other".into()]), None), ["/other"]);
        assert_eq!(run(Some(vec!["/other".into()]), Some(vec![b"x".to_vec()])), ["/other", "x"]);
        // `--entrypoint ""` clears it and keeps CMD.
        assert_eq!(run(Some(vec![]), None), ["default"]);
        assert_eq!(run(None, Some(vec![b"y".to_vec()])), ["/entry", "y"]);
    }

    #[test]
    fn env_overrides_come_first_and_compose_as_docker_does() {
        let run = RunConfig { env: vec!["C=4".into(), "B=3".into(), "C=5".into()], ..Default::default() };
        let env = run.apply(&image()).env;
        assert_eq!(env, ["C=4", "B=3", "C=5", "A=1"]);
        assert_eq!(
            program_env(&env, "box", "/root"),
            [&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=box", "C=5", "B=3", "A=1", "HOME=/root"]
        );
        let own = program_env(&["PATH=/bin".into(), "HOME=/h".into(), "HOSTNAME=x".into()], "box", "/root");
        assert_eq!(own, ["PATH=/bin", "HOSTNAME=x", "HOME=/h"]);
    }

    #[test]
    fn the_run_config_round_trips_as_json() {
        let run = RunConfig {
            cmd: Some(vec![vec![0xff, b' ', b'x']]),
            volumes: vec![GuestMount { tag: volume_tag(0), target: "/data".into(), read_only: true }],
            network: true,
            ..Default::default()
        };
        let back: RunConfig = serde_json::from_slice(&serde_json::to_vec(&run).unwrap()).unwrap();
        assert_eq!(back, run);
    }
}
