//! How far the reading of each layer blob has got, for progress displays like `docker
//! pull`'s: the layer threads count the bytes they read, and a display polls the counts on a
//! clock of its own (the library calls no one back from its threads). Bytes are counted as
//! they come in from the source — compressed, as the registry or archive holds them — so a
//! layer's count ends at its descriptor's size.
//!
//! The meter travels with the [`super::SpoolFile`], which every transport's layer reader is
//! given already.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::digest::Digest;

/// The reading of one image's layers, bottom first.
/// (The default, with no layers, is what a progress event carries once it crossed the wire.)
#[derive(Debug, Default)]
pub struct LayerMeter {
    layers: Vec<Counter>,
}

#[derive(Debug)]
struct Counter {
    digest: Digest,
    size: Option<u64>,
    read: AtomicU64,
    done: AtomicBool,
}

/// One layer as the meter last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReading {
    /// The blob's digest as the source lists it (for the daemon: the diff_id).
    pub digest: Digest,
    /// The blob's size, when the source says.
    pub size: Option<u64>,
    pub read: u64,
    /// Read to its end and indexed.
    pub done: bool,
}

impl LayerMeter {
    /// A meter for layers of these digests and sizes, bottom first.
    pub fn new(layers: impl IntoIterator<Item = (Digest, Option<u64>)>) -> Self {
        let layers = layers
            .into_iter()
            .map(|(digest, size)| Counter {
                digest,
                size,
                read: AtomicU64::new(0),
                done: AtomicBool::new(false),
            })
            .collect();
        LayerMeter { layers }
    }

    /// Each layer's reading now.
    pub fn layers(&self) -> Vec<LayerReading> {
        self.layers
            .iter()
            .map(|c| LayerReading {
                digest: c.digest,
                size: c.size,
                read: c.read.load(Ordering::Relaxed),
                done: c.done.load(Ordering::Acquire),
            })
            .collect()
    }

    /// `inner`, counted as layer `layer`'s bytes; a layer the meter does not know is not
    /// counted.
    pub(crate) fn reader<R: Read>(&self, layer: u32, inner: R) -> MeteredReader<'_, R> {
        MeteredReader { inner, counter: self.layers.get(layer as usize) }
    }

    /// Layer `layer` is read and indexed.
    pub(crate) fn finish(&self, layer: u32) {
        if let Some(counter) = self.layers.get(layer as usize) {
            counter.done.store(true, Ordering::Release);
        }
    }
}

/// A reader that adds what it reads to one layer's count.
pub(crate) struct MeteredReader<'m, R> {
    inner: R,
    counter: Option<&'m Counter>,
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(counter) = self.counter {
            counter.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_each_layer_reader_reads() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let meter = LayerMeter::new([(a, Some(5)), (b, None)]);
        let mut sink = Vec::new();
        meter.reader(0, &b"hello"[..]).read_to_end(&mut sink).unwrap();
        meter.reader(1, &b"xy"[..]).read_to_end(&mut sink).unwrap();
        meter.reader(7, &b"not counted"[..]).read_to_end(&mut sink).unwrap();
        meter.finish(0);
        meter.finish(9);
        assert_eq!(
            meter.layers(),
            [
                LayerReading { digest: a, size: Some(5), read: 5, done: true },
                LayerReading { digest: b, size: None, read: 2, done: false },
            ]
        );
    }
}
