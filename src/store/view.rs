//! A rootfs as a put reads it: the image file, and the layers laid into it by reference.
//!
//! An incremental conversion into a store leaves the data of the layers it restores where the
//! store saved it (`layers/<chain>/data`) instead of copying it into the new image file: the
//! ext4 writer lays metadata out around data it never reads, so the image file holds only the
//! metadata and the layers read afresh. A [`LaidLayer`] says where such a layer lies in the
//! image; [`RootfsView`] reads the image as if the bytes were there — the same bytes, and the
//! same data extents, as the file a copy would have made — so the put stores the very image a
//! copy gives. Where the store knows the chaining values of a laid layer's MiBs (saved with the
//! layer by the conversion that read it), the put needs neither to read nor to hash them.
//! Every file a put reads goes through a view; the boot files' have no layers laid in.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use blake3::hazmat::ChainingValue;

use super::blocks::BLOCK;
use crate::fileio::{copy_extents, data_extents, data_extents_in, merge_ranges};

/// Where bytes are read from at an offset: a file, or a [`RootfsView`] of one.
pub trait ReadAt: Sync {
    /// Fills `buf` with the bytes from `offset`.
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// A layer's data laid into an image by reference: the first `len` bytes of `data` at `at`
/// (both on a MiB), less the `dead` ranges (from the layer's start, sorted), which the image
/// does not keep. `values` are the chaining values of the layer's MiBs laid at `at` with
/// nothing dead, where known.
#[derive(Clone, Debug)]
pub struct LaidLayer {
    pub at: u64,
    pub len: u64,
    pub data: Arc<File>,
    pub dead: Vec<Range<u64>>,
    pub values: Vec<Option<ChainingValue>>,
}

impl LaidLayer {
    /// Where the layer's kept data lies in the image: its data extents, less what is dead.
    fn extents(&self) -> io::Result<Vec<Range<u64>>> {
        let size = self.data.metadata()?.len().min(self.len);
        let mut out = Vec::new();
        for e in data_extents_in(&self.data, 0..size)? {
            let mut pos = e.start;
            for d in self.dead_in(e.clone()) {
                if d.start > pos {
                    out.push(self.at + pos..self.at + d.start);
                }
                pos = pos.max(d.end);
            }
            if pos < e.end {
                out.push(self.at + pos..self.at + e.end);
            }
        }
        Ok(out)
    }

    /// Copies the layer's kept data into `file` at its place, as the image file of a copy.
    pub fn copy_into(&self, file: &File) -> io::Result<()> {
        let extents: Vec<_> = self.extents()?.iter().map(|e| e.start - self.at..e.end - self.at).collect();
        copy_extents(&self.data, &extents, file, self.at as i64)
    }

    /// The dead ranges that meet `range` (from the layer's start), clipped to it.
    fn dead_in(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let first = self.dead.partition_point(|d| d.end <= range.start);
        self.dead[first..]
            .iter()
            .take_while(move |d| d.start < range.end)
            .map(move |d| d.start.max(range.start)..d.end.min(range.end))
    }

    /// The bytes at `offset` (from the layer's start) into `buf`: dead ones and those past
    /// the data read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        buf.fill(0);
        let mut pos = offset;
        for dead in self.dead_in(offset..end).chain(std::iter::once(end..end)) {
            if dead.start > pos {
                let live = (pos - offset) as usize..(dead.start - offset) as usize;
                read_up_to_end(&self.data, &mut buf[live], pos)?;
            }
            pos = pos.max(dead.end);
        }
        Ok(())
    }
}

/// Reads `file` at `offset` into `buf` as far as the file goes; the rest of `buf` is left
/// as it is.
fn read_up_to_end(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An image file with layers laid into it by reference (see the module's comment).
pub struct RootfsView<'a> {
    file: File,
    laid: &'a [LaidLayer],
}

impl<'a> RootfsView<'a> {
    /// The view of `file` with `laid`. The image file holds nothing where a layer is laid:
    /// the ext4 writer lays metadata out from the end of the placed data on (`layout`), so a
    /// layer's bytes read from its saved data even where a filesystem without SEEK_DATA
    /// reports the whole file as data.
    /// `laid` lie in the order of the image, as its layers do.
    pub fn new(file: File, laid: &'a [LaidLayer]) -> RootfsView<'a> {
        debug_assert!(laid.windows(2).all(|w| w[0].at + w[0].len <= w[1].at), "laid layers in order");
        RootfsView { file, laid }
    }

    /// The data extents of the image as a copy would have made it, sorted and merged.
    pub fn extents(&self, size: u64) -> io::Result<Vec<Range<u64>>> {
        let mut all = data_extents(&self.file, size)?;
        for layer in self.laid {
            all.extend(layer.extents()?);
        }
        Ok(merge_ranges(all))
    }

    /// The chaining value of MiB `index` of the image, where a laid layer's saved values
    /// give it: the MiB lies in the layer, nothing in it is dead, and the layer knows it.
    pub fn known_value(&self, index: u64) -> Option<ChainingValue> {
        let mib = index * BLOCK..(index + 1) * BLOCK;
        let layer = self.laid.iter().find(|l| l.at <= mib.start && mib.end <= l.at + l.len)?;
        let within = mib.start - layer.at..mib.end - layer.at;
        if layer.dead_in(within.clone()).next().is_some() {
            return None;
        }
        *layer.values.get((within.start / BLOCK) as usize)?
    }
}

impl ReadAt for RootfsView<'_> {
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        for layer in self.laid.iter().filter(|l| l.at < end && offset < l.at + l.len) {
            if layer.at > pos {
                self.file
                    .read_exact_at(&mut buf[(pos - offset) as usize..(layer.at - offset) as usize], pos)?;
                pos = layer.at;
            }
            let until = end.min(layer.at + layer.len);
            layer.read_at(&mut buf[(pos - offset) as usize..(until - offset) as usize], pos - layer.at)?;
            pos = until;
        }
        if pos < end {
            self.file.read_exact_at(&mut buf[(pos - offset) as usize..], pos)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileio::punch_hole;

    /// A view reads and reports extents exactly as the file a copy makes: the layer's data
    /// copied in at its place, its dead ranges punched.
    #[test]
    fn a_view_is_the_file_a_copy_makes() {
        let dir = tempfile::tempdir().unwrap();
        let mib = BLOCK as usize;
        // The saved layer: data, a hole, data, 3.5 MiB long.
        let data = tempfile::tempfile_in(dir.path()).unwrap();
        let pattern: Vec<u8> = (0..7 * mib / 2).map(|i| (i * 7 % 251) as u8 + 1).collect();
        data.write_all_at(&pattern[..mib], 0).unwrap();
        data.write_all_at(&pattern[2 * mib..], 2 * BLOCK).unwrap();
        let at = 3 * BLOCK;
        let dead = vec![4096..8192, 2 * BLOCK + 4096..2 * BLOCK + 3 * 4096];
        let len = 4 * BLOCK;
        // The image file: metadata before and after the layer's place.
        let make = || {
            let f = tempfile::tempfile_in(dir.path()).unwrap();
            f.write_all_at(&[9u8; 4096], 0).unwrap();
            f.write_all_at(&[8u8; 8192], at + len).unwrap();
            f
        };
        let copied = make();
        copy_extents(&data, &data_extents(&data, 7 * BLOCK / 2).unwrap(), &copied, at as i64).unwrap();
        for d in &dead {
            punch_hole(&copied, at + d.start..at + d.end).unwrap();
        }
        let layer = LaidLayer { at, len, data: Arc::new(data), dead, values: Vec::new() };
        let laid = [layer];
        let view = RootfsView::new(make(), &laid);
        let size = copied.metadata().unwrap().len();
        assert_eq!(view.extents(size).unwrap(), data_extents(&copied, size).unwrap());
        for (offset, n) in [(0, size as usize), (at - 10, 20), (at + 4000, 5000), (at + len - 3, 10)] {
            let (mut a, mut b) = (vec![1u8; n], vec![2u8; n]);
            copied.read_exact_at(&mut a, offset).unwrap();
            view.read_bytes_at(&mut b, offset).unwrap();
            assert!(a == b, "{n} bytes at {offset}");
        }
    }
}
