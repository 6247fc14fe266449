//! The NBD wire protocol, as far as a read-only server speaks it: the fixed-newstyle
//! handshake, option haggling (`NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`,
//! `NBD_OPT_LIST`, `NBD_OPT_ABORT`), and simple replies to transmission requests. Names and
//! values are those of the protocol document (NetworkBlockDevice/nbd, `doc/proto.md`), cited
//! by section; every integer on the wire is big-endian ("network byte order").
//!
//! Parsing is apart from I/O: each function reads from a `Read` or writes to a `Write` it is
//! given, so the tests drive it over in-memory buffers, and the client half
//! ([`client_handshake`]) lets the tests drive a real server.

use std::io::{self, Read, Write};

// ---- "Newstyle negotiation" ----

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: follows NBDMAGIC in the newstyle handshake, and starts every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply ("Option haggling").
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags, server → client ("Newstyle negotiation").
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags, client → server.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// The zero padding after `NBD_OPT_EXPORT_NAME`'s reply, unless `NO_ZEROES` was agreed.
pub const EXPORT_NAME_PADDING: usize = 124;

// ---- "Option types" ----
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;

// ---- "Option reply types" ----
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
/// Error replies have bit 31 set.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;

// ---- "Information types" (NBD_REP_INFO) ----
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---- "Transmission flags" ----
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Several connections may serve one client (safe: nothing is ever written).
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// ---- "Transmission phase": requests and simple replies ----
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// A request header: magic u32, flags u16, type u16, cookie u64, offset u64, length u32.
pub const REQUEST_BYTES: usize = 28;

// ---- "Request types" ----
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;

// ---- "Error values" ----
/// "SHOULD return EPERM if it receives a write or trim request on a read-only export."
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
/// "SHOULD return EINVAL if it receives an unknown command", and for reads past the end.
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;

/// The largest read this server answers in one reply, advertised as the maximum block size
/// (QEMU's own limit is 32 MiB too).
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Preferred block size: the page size, what the guest's block layer reads anyway.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;

/// Longest export name or option payload we accept ("MUST be no longer than 4096 bytes"
/// for strings; an `NBD_OPT_GO` adds a few info requests).
const MAX_OPTION_BYTES: u32 = 8192;

/// What an export looks like to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
}

/// How a handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// Transmission begins with the named export.
    Export(String),
    /// The client aborted, or asked for an export that does not exist with
    /// `NBD_OPT_EXPORT_NAME` (which has no error reply: the server closes).
    Closed,
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn option_reply(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend(OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend(option.to_be_bytes());
    out.extend(reply.to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    w.write_all(&out)
}

/// The server's half of the handshake, up to transmission. `lookup` says whether an export
/// name exists and what it looks like.
pub fn server_handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    lookup: &dyn Fn(&str) -> Option<ExportInfo>,
    names: &[String],
) -> io::Result<Negotiated> {
    let mut hello = Vec::with_capacity(18);
    hello.extend(NBDMAGIC.to_be_bytes());
    hello.extend(IHAVEOPT.to_be_bytes());
    hello.extend((NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello)?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    // "If the client does not set NBD_FLAG_C_FIXED_NEWSTYLE... the server MAY close": old
    // clients cannot be told why an option failed.
    if client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(protocol_error("the client does not speak fixed newstyle"));
    }
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;
    loop {
        if read_u64(r)? != IHAVEOPT {
            return Err(protocol_error("an option request without IHAVEOPT"));
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION_BYTES {
            return Err(protocol_error(format!("an option of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        match option {
            NBD_OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(info) = lookup(&name) else { return Ok(Negotiated::Closed) };
                let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
                out.extend(info.size.to_be_bytes());
                out.extend(info.flags.to_be_bytes());
                if !no_zeroes {
                    out.extend([0u8; EXPORT_NAME_PADDING]);
                }
                w.write_all(&out)?;
                w.flush()?;
                return Ok(Negotiated::Export(name));
            }
            NBD_OPT_ABORT => {
                // "the server MUST reply with NBD_REP_ACK" (a client may already be gone).
                let _ = option_reply(w, option, NBD_REP_ACK, &[]).and_then(|()| w.flush());
                return Ok(Negotiated::Closed);
            }
            NBD_OPT_LIST => {
                if !data.is_empty() {
                    option_reply(w, option, NBD_REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                } else {
                    for name in names {
                        let mut entry = (name.len() as u32).to_be_bytes().to_vec();
                        entry.extend(name.as_bytes());
                        option_reply(w, option, NBD_REP_SERVER, &entry)?;
                    }
                    option_reply(w, option, NBD_REP_ACK, &[])?;
                }
            }
            NBD_OPT_INFO | NBD_OPT_GO => match parse_info_request(&data) {
                None => option_reply(w, option, NBD_REP_ERR_INVALID, b"malformed request")?,
                Some((name, _)) if lookup(&name).is_none() => {
                    let message = format!("no export named {name:?}");
                    option_reply(w, option, NBD_REP_ERR_UNKNOWN, message.as_bytes())?;
                }
                Some((name, requests)) => {
                    let info = lookup(&name).expect("looked up above");
                    let mut export = NBD_INFO_EXPORT.to_be_bytes().to_vec();
                    export.extend(info.size.to_be_bytes());
                    export.extend(info.flags.to_be_bytes());
                    option_reply(w, option, NBD_REP_INFO, &export)?;
                    if requests.contains(&NBD_INFO_BLOCK_SIZE) {
                        let mut sizes = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        for size in [1, PREFERRED_BLOCK_BYTES, MAX_REQUEST_BYTES] {
                            sizes.extend(size.to_be_bytes());
                        }
                        option_reply(w, option, NBD_REP_INFO, &sizes)?;
                    }
                    option_reply(w, option, NBD_REP_ACK, &[])?;
                    if option == NBD_OPT_GO {
                        w.flush()?;
                        return Ok(Negotiated::Export(name));
                    }
                }
            },
            // Structured replies, metadata contexts, TLS, extended headers: not offered, and
            // a client falls back to what it negotiated.
            _ => option_reply(w, option, NBD_REP_ERR_UNSUP, &[])?,
        }
        w.flush()?;
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: u32 name length, name, u16 count, u16 info types.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + name_len)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let types = rest.get(2..2 + 2 * count)?;
    if rest.len() != 2 + 2 * count {
        return None;
    }
    let requests = types.chunks_exact(2).map(|t| u16::from_be_bytes([t[0], t[1]])).collect();
    Some((String::from_utf8_lossy(name).into_owned(), requests))
}

/// One transmission request ("Request message").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// The next request header; `None` at a clean end of stream between requests.
pub fn read_request(r: &mut impl Read) -> io::Result<Option<Request>> {
    let mut b = [0u8; REQUEST_BYTES];
    let mut got = 0;
    while got < REQUEST_BYTES {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    if magic != NBD_REQUEST_MAGIC {
        return Err(protocol_error(format!("request magic {magic:#x}")));
    }
    Ok(Some(Request {
        flags: u16::from_be_bytes(b[4..6].try_into().expect("2 bytes")),
        kind: u16::from_be_bytes(b[6..8].try_into().expect("2 bytes")),
        cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
    }))
}

/// A simple reply: magic, error, cookie, then `data` (a read's bytes; nothing on error).
pub fn write_simple_reply(w: &mut impl Write, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    header[4..8].copy_from_slice(&error.to_be_bytes());
    header[8..16].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&header)?;
    w.write_all(data)?;
    w.flush()
}

/// The client's half of the handshake with `NBD_OPT_GO` for `name`: the export's size and
/// flags, or the server's refusal as an error.
pub fn client_handshake(r: &mut impl Read, w: &mut impl Write, name: &str) -> io::Result<ExportInfo> {
    if read_u64(r)? != NBDMAGIC || read_u64(r)? != IHAVEOPT {
        return Err(protocol_error("not an NBD server (no newstyle greeting)"));
    }
    let flags = read_u16(r)?;
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol_error("the server does not speak fixed newstyle"));
    }
    let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if flags & NBD_FLAG_NO_ZEROES != 0 {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend(name.as_bytes());
    data.extend(0u16.to_be_bytes());
    let mut out = client_flags.to_be_bytes().to_vec();
    out.extend(IHAVEOPT.to_be_bytes());
    out.extend(NBD_OPT_GO.to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    w.write_all(&out)?;
    w.flush()?;
    let mut info = None;
    loop {
        if read_u64(r)? != OPTION_REPLY_MAGIC {
            return Err(protocol_error("an option reply without its magic"));
        }
        let _option = read_u32(r)?;
        let reply = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION_BYTES {
            return Err(protocol_error(format!("an option reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        match reply {
            NBD_REP_ACK => {
                return info
                    .ok_or_else(|| protocol_error("NBD_OPT_GO acknowledged without the export's size"))
            }
            NBD_REP_INFO if payload.len() == 12 && payload[..2] == NBD_INFO_EXPORT.to_be_bytes() => {
                info = Some(ExportInfo {
                    size: u64::from_be_bytes(payload[2..10].try_into().expect("8 bytes")),
                    flags: u16::from_be_bytes(payload[10..12].try_into().expect("2 bytes")),
                });
            }
            NBD_REP_INFO => {}
            error if error & NBD_REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&payload);
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the server refused export {name:?}: {message} (reply {error:#x})"),
                ));
            }
            other => return Err(protocol_error(format!("unexpected option reply {other}"))),
        }
    }
}

/// A request header as a client sends it.
pub fn write_request(w: &mut impl Write, req: &Request) -> io::Result<()> {
    let mut b = [0u8; REQUEST_BYTES];
    b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&req.flags.to_be_bytes());
    b[6..8].copy_from_slice(&req.kind.to_be_bytes());
    b[8..16].copy_from_slice(&req.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&req.offset.to_be_bytes());
    b[24..28].copy_from_slice(&req.length.to_be_bytes());
    w.write_all(&b)?;
    w.flush()
}

/// A simple reply's header as a client reads it: (error, cookie).
pub fn read_simple_reply(r: &mut impl Read) -> io::Result<(u32, u64)> {
    if read_u32(r)? != NBD_SIMPLE_REPLY_MAGIC {
        return Err(protocol_error("a reply without the simple reply magic"));
    }
    Ok((read_u32(r)?, read_u64(r)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut out = IHAVEOPT.to_be_bytes().to_vec();
        out.extend(code.to_be_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(data);
        out
    }

    fn go(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend(name.as_bytes());
        data.extend((infos.len() as u16).to_be_bytes());
        for i in infos {
            data.extend(i.to_be_bytes());
        }
        data
    }

    const INFO: ExportInfo = ExportInfo { size: 1 << 20, flags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY };

    fn lookup(name: &str) -> Option<ExportInfo> {
        (name.is_empty() || name == "img").then_some(INFO)
    }

    /// Runs the server's handshake on `client_bytes`; what it negotiated and what it sent.
    fn serve(client_bytes: Vec<u8>) -> (io::Result<Negotiated>, Vec<u8>) {
        let mut sent = Vec::new();
        let result = server_handshake(&mut client_bytes.as_slice(), &mut sent, &lookup, &["img".into()]);
        (result, sent)
    }

    /// The option replies in `bytes` after the 18-byte greeting: (reply type, data).
    fn replies(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut r = &bytes[18..];
        let mut out = Vec::new();
        while !r.is_empty() {
            assert_eq!(read_u64(&mut r).unwrap(), OPTION_REPLY_MAGIC);
            let _ = read_u32(&mut r).unwrap();
            let kind = read_u32(&mut r).unwrap();
            let len = read_u32(&mut r).unwrap() as usize;
            out.push((kind, r[..len].to_vec()));
            r = &r[len..];
        }
        out
    }

    #[test]
    fn greeting_is_fixed_newstyle_without_zeroes() {
        let (_, sent) = serve(Vec::new());
        assert_eq!(&sent[..8], b"NBDMAGIC");
        assert_eq!(&sent[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([sent[16], sent[17]]), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    }

    #[test]
    fn go_answers_info_then_ack_and_starts_transmission() {
        let mut c = NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        c.extend(option(NBD_OPT_INFO, &go("img", &[])));
        c.extend(option(NBD_OPT_GO, &go("", &[NBD_INFO_BLOCK_SIZE])));
        let (result, sent) = serve(c);
        assert_eq!(result.unwrap(), Negotiated::Export(String::new()));
        let r = replies(&sent);
        let kinds: Vec<u32> = r.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [NBD_REP_INFO, NBD_REP_ACK, NBD_REP_INFO, NBD_REP_INFO, NBD_REP_ACK]);
        assert_eq!(&r[0].1[..2], &NBD_INFO_EXPORT.to_be_bytes());
        assert_eq!(u64::from_be_bytes(r[0].1[2..10].try_into().unwrap()), 1 << 20);
        assert_eq!(&r[3].1[..2], &NBD_INFO_BLOCK_SIZE.to_be_bytes());
    }

    #[test]
    fn unknown_exports_and_options_get_error_replies() {
        let mut c = NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        c.extend(option(NBD_OPT_GO, &go("other", &[])));
        c.extend(option(8, &[])); // NBD_OPT_STRUCTURED_REPLY
        c.extend(option(NBD_OPT_GO, b"\0\0"));
        c.extend(option(NBD_OPT_LIST, &[]));
        c.extend(option(NBD_OPT_ABORT, &[]));
        let (result, sent) = serve(c);
        assert_eq!(result.unwrap(), Negotiated::Closed);
        let kinds: Vec<u32> = replies(&sent).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                NBD_REP_ERR_UNKNOWN,
                NBD_REP_ERR_UNSUP,
                NBD_REP_ERR_INVALID,
                NBD_REP_SERVER,
                NBD_REP_ACK,
                NBD_REP_ACK
            ]
        );
    }

    #[test]
    fn export_name_replies_size_and_flags_or_closes() {
        let mut c = (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes().to_vec();
        c.extend(option(NBD_OPT_EXPORT_NAME, b"img"));
        let (result, sent) = serve(c);
        assert_eq!(result.unwrap(), Negotiated::Export("img".into()));
        assert_eq!(sent.len(), 18 + 10, "no zero padding after NO_ZEROES");
        let mut c = NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        c.extend(option(NBD_OPT_EXPORT_NAME, b"img"));
        assert_eq!(serve(c).1.len(), 18 + 10 + EXPORT_NAME_PADDING);
        let mut c = NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        c.extend(option(NBD_OPT_EXPORT_NAME, b"nope"));
        assert_eq!(serve(c).0.unwrap(), Negotiated::Closed);
    }

    #[test]
    fn old_style_clients_and_bad_magic_are_refused() {
        assert!(serve(0u32.to_be_bytes().to_vec()).0.is_err());
        let mut c = NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        c.extend([0u8; 16]);
        assert!(serve(c).0.is_err());
    }

    #[test]
    fn requests_round_trip_and_end_cleanly() {
        let req = Request { flags: 0, kind: NBD_CMD_READ, cookie: 7, offset: 4096, length: 512 };
        let mut bytes = Vec::new();
        write_request(&mut bytes, &req).unwrap();
        let mut r = bytes.as_slice();
        assert_eq!(read_request(&mut r).unwrap(), Some(req));
        assert_eq!(read_request(&mut r).unwrap(), None);
        assert!(read_request(&mut &bytes[..10]).is_err(), "a torn header is an error");
    }
}
