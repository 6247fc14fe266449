//! Resolving the image's USER the way Docker (runc) does, through the image's own
//! `/etc/passwd` and `/etc/group`: `diskc-init` runs the program with the resulting ids,
//! supplementary groups and HOME. Parsing is separate from reading the files so that it is
//! tested on the host.

/// One `/etc/passwd` line: `name:password:uid:gid:gecos:home:shell`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` line: `name:password:gid:member,member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Who the program runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without duplicates.
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    NoSuchGroup(String),
}

/// Parses `/etc/passwd`; malformed lines and comments are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() || f[0].starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group`; malformed lines and comments are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() || f[0].starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Resolves a USER value (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) as Docker does
/// (through runc's user lookup): a name must exist in passwd; a number need not (then gid 0
/// and HOME `/`); the group part, by name or number, overrides the passwd gid; the
/// supplementary groups are the primary group and, without a group part, the groups that
/// list the user's name as a member.
pub fn resolve_user(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<Identity, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|p| p.name == user_part)
                .ok_or_else(|| UserError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    let uid = entry.map_or_else(|| user_part.parse().unwrap_or(0), |e| e.uid);
    let mut gid = entry.map_or(0, |e| e.gid);
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                groups.iter().find(|e| e.name == g).ok_or_else(|| UserError::NoSuchGroup(g.to_string()))?.gid
            }
        };
    }
    let mut supplementary: Vec<u32> = match entry {
        Some(e) if group_part.is_none() => {
            groups.iter().filter(|g| g.members.contains(&e.name)).map(|g| g.gid).collect()
        }
        _ => Vec::new(),
    };
    supplementary.push(gid);
    supplementary.sort_unstable();
    supplementary.dedup();
    let home = entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| "/".to_string());
    Ok(Identity { uid, gid, groups: supplementary, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\n\
        app:x:1000:1000:App,,,:/home/app:/bin/bash\nsvc:x:999:998::/srv:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,svc\napp:x:1000:\nsvc:x:998:\naudio:x:29:app\nbad\n";

    fn resolve(spec: &str) -> Result<Identity, UserError> {
        resolve_user(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_passwd_and_group_skipping_junk() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["root", "app", "svc"]);
        assert_eq!(p[1], PasswdEntry { name: "app".into(), uid: 1000, gid: 1000, home: "/home/app".into() });
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 5);
        assert_eq!(g[1].members, ["app", "svc"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        assert_eq!(resolve("").unwrap(), Identity { uid: 0, gid: 0, groups: vec![0], home: "/root".into() });
        assert_eq!(
            resolve("app").unwrap(),
            Identity { uid: 1000, gid: 1000, groups: vec![10, 29, 1000], home: "/home/app".into() }
        );
        assert_eq!(resolve("1000:wheel").unwrap().gid, 10);
        // A group part replaces the memberships, as with runc's explicit form.
        assert_eq!(
            resolve("svc:5").unwrap(),
            Identity { uid: 999, gid: 5, groups: vec![5], home: "/srv".into() }
        );
        // A uid without a passwd entry is fine: only its group, HOME is /.
        assert_eq!(
            resolve("4242").unwrap(),
            Identity { uid: 4242, gid: 0, groups: vec![0], home: "/".into() }
        );
        assert_eq!(resolve("4242:4343").unwrap().groups, [4343]);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(resolve("nobody"), Err(UserError::NoSuchUser("nobody".into())));
        assert_eq!(resolve("app:staff"), Err(UserError::NoSuchGroup("staff".into())));
    }
}
