//! Two threads for one layer: the caller's thread decompresses, a second one parses the tar
//! and writes the spool. For a large base layer these are the two halves of the critical
//! path (inflate, then per-file parsing and page-cache writes), so each gets a core.
//!
//! The decompressed stream crosses over in buffers through a bounded channel; spent buffers
//! come back to be filled again. Errors cross over too, in stream order, so the parser sees a
//! read error exactly where a single thread would have.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

/// Bytes per buffer, and buffers in flight.
const BUFFER: usize = 256 * 1024;
const IN_FLIGHT: usize = 8;

/// Runs `consume` on a second thread over what `source` reads, while this thread reads it.
/// Returns `consume`'s result; a read error of `source` reaches `consume` as its read error.
pub fn relay<R: Read, T: Send>(mut source: R, consume: impl FnOnce(&mut dyn Read) -> T + Send) -> T {
    let (to_consumer, filled) = mpsc::sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    let (give_back, spent) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let consumer =
            scope.spawn(move || consume(&mut Relayed { filled, give_back, current: Vec::new(), at: 0 }));
        pump(&mut source, &to_consumer, &spent);
        drop(to_consumer);
        consumer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Reads `source` to its end (or its first error) into buffers sent to the consumer; stops
/// early when the consumer has gone.
fn pump(source: &mut impl Read, to_consumer: &SyncSender<io::Result<Vec<u8>>>, spent: &Receiver<Vec<u8>>) {
    loop {
        let mut buf = spent.try_recv().unwrap_or_else(|_| vec![0; BUFFER]);
        buf.resize(BUFFER, 0);
        let mut filled = 0;
        let result = loop {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break Ok(true),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        if filled > 0 && to_consumer.send(Ok(buf)).is_err() {
            return;
        }
        match result {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                let _ = to_consumer.send(Err(e));
                return;
            }
        }
    }
}

/// The consumer's end: a reader over the buffers as they arrive.
struct Relayed {
    filled: Receiver<io::Result<Vec<u8>>>,
    give_back: Sender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Relayed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.filled.recv() {
                Ok(Ok(next)) => {
                    let spent = std::mem::replace(&mut self.current, next);
                    let _ = self.give_back.send(spent);
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The source ended.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_reads_what_the_source_reads() {
        let bytes: Vec<u8> = (0..3 * BUFFER + 17).map(|i| (i % 253) as u8).collect();
        let got = relay(&bytes[..], |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        assert_eq!(got.unwrap(), bytes);
    }

    #[test]
    fn a_read_error_arrives_after_the_bytes_before_it() {
        let failing = (&[7u8; 1000][..]).chain(io::Read::take(Failing, 1));
        let got = relay(failing, |r| {
            let mut v = Vec::new();
            let e = r.read_to_end(&mut v).unwrap_err();
            (v.len(), e.kind())
        });
        assert_eq!(got, (1000, io::ErrorKind::InvalidData));
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_source() {
        let endless = io::repeat(1);
        let got = relay(endless, |r| {
            let mut head = [0u8; 10];
            r.read_exact(&mut head).map(|_| head)
        });
        assert_eq!(got.unwrap(), [1; 10]);
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::InvalidData.into())
        }
    }
}
