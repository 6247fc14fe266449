//! The `docker run` flags of `diskc boot`, parsed and checked before anything starts:
//! `-p` (publish a guest port), `-v` (a host directory), `-e`/`--env-file` (environment),
//! `-w`, `--hostname`. Each parser takes text and returns a value or a usage error naming
//! the flag; reading an env file is the only I/O, done by the caller.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Classify, ErrorKind};

/// A flag that does not parse or does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} {value:?}: {reason}")]
pub struct OptionError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl Classify for OptionError {
    fn error_kind(&self) -> ErrorKind {
        ErrorKind::Usage
    }
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> OptionError {
    OptionError { flag, value: value.to_string(), reason: reason.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A guest port published on the host, as `-p [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    /// `None`: every host address, as Docker binds.
    pub host_ip: Option<Ipv4Addr>,
    /// 0: a free port, chosen when the boot starts.
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

fn port(flag: &'static str, spec: &str, text: &str, zero_ok: bool) -> Result<u16, OptionError> {
    match text.parse::<u16>() {
        Ok(0) if !zero_ok => Err(bad(flag, spec, "port 0 cannot be published")),
        Ok(p) => Ok(p),
        Err(_) if text.contains('-') => Err(bad(flag, spec, "port ranges are not supported")),
        Err(_) => Err(bad(flag, spec, format!("{text:?} is not a port number"))),
    }
}

impl FromStr for Publish {
    type Err = OptionError;

    fn from_str(spec: &str) -> Result<Publish, OptionError> {
        const FLAG: &str = "-p";
        let (ports, protocol) = match spec.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => {
                return Err(bad(FLAG, spec, format!("unknown protocol {other:?}: use tcp or udp")))
            }
            None => (spec, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip, host, guest) = match parts[..] {
            [guest] => (None, None, guest),
            [host, guest] => (None, Some(host), guest),
            [ip, host, guest] => (Some(ip), Some(host), guest),
            _ => return Err(bad(
                FLAG,
                spec,
                "expected [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp] (IPv6 host addresses are not supported)",
            )),
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| bad(FLAG, spec, format!("{ip:?} is not an IPv4 address")))?,
            ),
        };
        let host_port = match host {
            None | Some("") => 0,
            Some(p) => port(FLAG, spec, p, false)?,
        };
        Ok(Publish { host_ip, host_port, guest_port: port(FLAG, spec, guest, false)?, protocol })
    }
}

impl Publish {
    /// An image's `EXPOSE`d port (`80/tcp`, as the image config lists it) on a free port of
    /// every host address, for `-P`.
    pub fn exposed(spec: &str) -> Result<Publish, OptionError> {
        let (number, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let publish: Publish = format!("{number}/{protocol}")
            .parse()
            .map_err(|e: OptionError| OptionError { flag: "-P", ..e })?;
        Ok(publish)
    }

    /// QEMU's `hostfwd=` value (`-netdev user`): `tcp:127.0.0.1:8080-:80`.
    pub fn hostfwd(&self) -> String {
        let ip = self.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
        format!("{}:{ip}:{}-:{}", self.protocol.name(), self.host_port, self.guest_port)
    }

    /// `80/tcp -> 0.0.0.0:8080`, as `docker port` prints a mapping.
    pub fn describe(&self) -> String {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        format!("{}/{} -> {ip}:{}", self.guest_port, self.protocol.name(), self.host_port)
    }
}

/// A host directory mounted in the guest, as `-v HOSTDIR:GUESTDIR[:ro|:rw]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = OptionError;

    fn from_str(spec: &str) -> Result<Volume, OptionError> {
        const FLAG: &str = "-v";
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, read_only) = match parts[..] {
            [host, guest] => (host, guest, false),
            [host, guest, "ro"] => (host, guest, true),
            [host, guest, "rw"] => (host, guest, false),
            [_, _, mode] => return Err(bad(FLAG, spec, format!("unknown mode {mode:?}: use ro or rw"))),
            _ => return Err(bad(FLAG, spec, "expected HOSTDIR:GUESTDIR[:ro]")),
        };
        if !host.starts_with('/') {
            return Err(bad(
                FLAG,
                spec,
                "the host directory must be an absolute path (named volumes are not supported)",
            ));
        }
        if !guest.starts_with('/') || guest == "/" {
            return Err(bad(FLAG, spec, "the guest directory must be an absolute path other than /"));
        }
        Ok(Volume { host: PathBuf::from(host), guest: guest.to_string(), read_only })
    }
}

/// The entries of an `--env-file`, as Docker reads one: a line is `KEY=value` (the value
/// taken literally, quotes included) or `KEY` (taken from the host's environment); blank
/// lines and lines starting with `#` are skipped.
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `KEY=value` strings from `-e`/`--env-file` entries: a bare `KEY` takes the host's value
/// through `host`, and is dropped when the host has none (as Docker does).
pub fn resolve_env(
    flag: &'static str,
    entries: &[String],
    host: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, OptionError> {
    let mut env = Vec::new();
    for entry in entries {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        if key.is_empty() {
            return Err(bad(flag, entry, "no variable name before ="));
        }
        if key.contains(char::is_whitespace) {
            return Err(bad(flag, entry, "the variable name contains whitespace"));
        }
        if entry.contains('=') {
            env.push(entry.clone());
        } else if let Some(value) = host(key) {
            env.push(format!("{key}={value}"));
        }
    }
    Ok(env)
}

/// `-w`: Docker requires an absolute path.
pub fn check_workdir(dir: &str) -> Result<(), OptionError> {
    if !dir.starts_with('/') {
        return Err(bad("-w", dir, "the working directory must be an absolute path"));
    }
    Ok(())
}

/// `--hostname`: an RFC 1123 host name (letters, digits, `-` and `.`), at most 64 bytes as
/// the kernel's `sethostname` takes.
pub fn check_hostname(name: &str) -> Result<(), OptionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if !ok {
        return Err(bad("--hostname", name, "expected letters, digits, '-' and '.', at most 64 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(spec: &str) -> Publish {
        spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn publish_specs_as_docker_takes_them() {
        let p = publish("8080:80");
        assert_eq!((p.host_ip, p.host_port, p.guest_port, p.protocol), (None, 8080, 80, Protocol::Tcp));
        assert_eq!(p.hostfwd(), "tcp::8080-:80");
        let p = publish("127.0.0.1:5353:53/udp");
        assert_eq!(p.hostfwd(), "udp:127.0.0.1:5353-:53");
        assert_eq!(p.describe(), "53/udp -> 127.0.0.1:5353");
        assert_eq!(publish("80").host_port, 0);
        assert_eq!(publish("127.0.0.1::80").host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(Publish::exposed("8443/tcp").unwrap().guest_port, 8443);
        assert_eq!(Publish::exposed("53/udp").unwrap().protocol, Protocol::Udp);
        for wrong in ["", "x:80", "8080:80/sctp", "8000-8010:80", "1.2.3:80:80", "[::1]:80:80", "0", "70000"]
        {
            assert!(wrong.parse::<Publish>().is_err(), "{wrong}");
        }
        assert_eq!("8000-8010:80".parse::<Publish>().unwrap_err().reason, "port ranges are not supported");
        assert_eq!(Publish::exposed("x/tcp").unwrap_err().flag, "-P");
    }

    #[test]
    fn volume_specs() {
        let v: Volume = "/srv/data:/data:ro".parse().unwrap();
        assert_eq!(v, Volume { host: "/srv/data".into(), guest: "/data".into(), read_only: true });
        assert!(!"/a:/b".parse::<Volume>().unwrap().read_only);
        assert!(!"/a:/b:rw".parse::<Volume>().unwrap().read_only);
        for wrong in ["data:/data", "/a:b", "/a:/", "/a:/b:rx", "/a", "/a:/b:ro:x"] {
            assert!(wrong.parse::<Volume>().is_err(), "{wrong}");
        }
    }

    #[test]
    fn env_entries_resolve_like_docker() {
        let file = parse_env_file("# comment\n\nA=1\n  B=\"quoted\"\nFROM_HOST\nMISSING\n");
        assert_eq!(file, ["A=1", "B=\"quoted\"", "FROM_HOST", "MISSING"]);
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        assert_eq!(resolve_env("--env-file", &file, host).unwrap(), ["A=1", "B=\"quoted\"", "FROM_HOST=h"]);
        assert!(resolve_env("-e", &["=x".into()], host).is_err());
        assert!(resolve_env("-e", &["A B=x".into()], host).is_err());
    }

    #[test]
    fn workdir_and_hostname_checks() {
        assert!(check_workdir("/srv").is_ok());
        assert!(check_workdir("srv").is_err());
        assert!(check_hostname("devbox-1.local").is_ok());
        for wrong in ["", "-x", "a b", "a_b", &"x".repeat(65)] {
            assert!(check_hostname(wrong).is_err(), "{wrong}");
        }
    }
}
