//! The newc ("SVR4 without CRC") cpio format, the one the kernel unpacks an initramfs from
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Only what an initrd needs:
//! directories, regular files and device nodes, written in the order given with the
//! inode numbers and times the caller chose, so the bytes depend on the content alone.

use std::io::{self, Write};

/// `c_magic` of the newc format.
const MAGIC: &[u8; 6] = b"070701";
/// Header bytes: the magic and 13 eight-digit hex fields.
const HEADER_LEN: usize = 6 + 13 * 8;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

/// `S_IF*` file types as cpio stores them in `c_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/`, e.g. `dev/console`.
    pub name: String,
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub mtime: u32,
    /// `(major, minor)` of a device node; zeros otherwise.
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl Entry {
    fn nlink(&self) -> u32 {
        if self.mode & 0o170000 == S_IFDIR {
            2
        } else {
            1
        }
    }
}

/// Writes `entries` and the trailer. Owners are root; `c_check` is 0 as newc requires.
pub fn write_newc<W: Write>(out: &mut W, entries: &[Entry]) -> io::Result<()> {
    let mut offset = 0usize;
    let trailer =
        Entry { name: TRAILER.to_string(), ino: 0, mode: 0, mtime: 0, rdev: (0, 0), data: Vec::new() };
    for e in entries.iter().chain(std::iter::once(&trailer)) {
        let size =
            u32::try_from(e.data.len()).map_err(|_| io::Error::other(format!("{} is over 4 GiB", e.name)))?;
        let nlink = if e.name == TRAILER { 1 } else { e.nlink() };
        let fields =
            [e.ino, e.mode, 0, 0, nlink, e.mtime, size, 0, 0, e.rdev.0, e.rdev.1, e.name.len() as u32 + 1, 0];
        let mut header = Vec::with_capacity(HEADER_LEN + e.name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(e.name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad4(offset + header.len()), 0);
        out.write_all(&header)?;
        offset += header.len();
        out.write_all(&e.data)?;
        offset += e.data.len();
        let pad = pad4(offset);
        out.write_all(&[0u8; 3][..pad])?;
        offset += pad;
    }
    Ok(())
}

/// Zero bytes that bring `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Reads a newc archive back (up to its trailer): for tests and for inspecting an initrd.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let header = bytes.get(at..at + HEADER_LEN).ok_or(format!("truncated header at {at}"))?;
        if &header[..6] != MAGIC {
            return Err(format!("bad magic at {at}"));
        }
        let start = at;
        let field = |i: usize| -> Result<u32, String> {
            let hex = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| format!("bad field at {start}"))?;
            u32::from_str_radix(hex, 16).map_err(|_| format!("bad field {hex:?} at {start}"))
        };
        let (size, namesize) = (field(6)? as usize, field(11)? as usize);
        let name_start = at + HEADER_LEN;
        let name_bytes = bytes.get(name_start..name_start + namesize).ok_or("truncated name")?;
        let name = String::from_utf8(name_bytes[..namesize.saturating_sub(1)].to_vec())
            .map_err(|_| "name not utf-8")?;
        let data_start = name_start + namesize + pad4(name_start + namesize);
        let data = bytes.get(data_start..data_start + size).ok_or("truncated data")?.to_vec();
        at = data_start + size + pad4(data_start + size);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            ino: field(0)?,
            mode: field(1)?,
            mtime: field(5)?,
            rdev: (field(9)?, field(10)?),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry { name: "dev".into(), ino: 1, mode: S_IFDIR | 0o755, mtime: 0, rdev: (0, 0), data: vec![] },
            Entry {
                name: "dev/console".into(),
                ino: 2,
                mode: S_IFCHR | 0o600,
                mtime: 0,
                rdev: (5, 1),
                data: vec![],
            },
            Entry {
                name: "init".into(),
                ino: 3,
                mode: S_IFREG | 0o755,
                mtime: 7,
                rdev: (0, 0),
                data: b"abcde".to_vec(),
            },
            Entry {
                name: "x".into(),
                ino: 4,
                mode: S_IFREG | 0o644,
                mtime: 0,
                rdev: (0, 0),
                data: vec![9; 4],
            },
        ]
    }

    #[test]
    fn round_trips_through_the_reader() {
        let mut bytes = Vec::new();
        write_newc(&mut bytes, &sample()).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(read_newc(&bytes).unwrap(), sample());
    }

    #[test]
    fn header_layout_matches_the_format() {
        let mut bytes = Vec::new();
        write_newc(&mut bytes, &sample()[2..3]).unwrap();
        // magic, ino 3, mode 0100755, uid, gid, nlink 1, mtime 7, size 5, 4 device fields, namesize 5, check
        let expected = concat!(
            "070701", "00000003", "000081ed", "00000000", "00000000", "00000001", "00000007", "00000005",
            "00000000", "00000000", "00000000", "00000000", "00000005", "00000000", "init\0"
        );
        assert_eq!(&bytes[..expected.len()], expected.as_bytes());
        // 110 + 5 = 115 -> padded to 116, then the data.
        assert_eq!(&bytes[116..121], b"abcde");
        assert!(String::from_utf8_lossy(&bytes).contains("TRAILER!!!"));
    }
}
